//! gRPC reflection of the control API, from the committed descriptor set, so
//! `grpcurl` and similar tools need no .proto file.

pub use tonic_reflection::server::Error as ReflectionError;

/// A reflection service (v1) describing the control API.
pub fn reflection_service() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    ReflectionError,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// The same as [`reflection_service`] for clients that still speak v1alpha.
pub fn reflection_service_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    ReflectionError,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
}
