//! `[tracing.otlp]`: where and how spans are exported.

use std::time::Duration;

use super::Checker;
use crate::model::{Otlp, OtlpProtocol};
use crate::raw::RawOtlp;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_BATCH: u32 = 512;
const DEFAULT_QUEUE: u32 = 4096;

impl Checker {
    pub(super) fn otlp(&mut self, path: &str, raw: &RawOtlp) -> Otlp {
        let protocol = self.choice(
            &format!("{path}.protocol"),
            raw.protocol.clone(),
            OtlpProtocol::Grpc,
            &[("grpc", OtlpProtocol::Grpc), ("http", OtlpProtocol::Http)],
        );
        let (host, port, url_path) = match super::auth::split_url(&raw.endpoint) {
            Some(parts) => parts,
            None => {
                let hint = if raw.endpoint.starts_with("https://") {
                    " (TLS to the collector is not supported: send to a collector \
                     on this host or its network, in clear text)"
                } else {
                    ""
                };
                self.push(
                    format!("{path}.endpoint"),
                    format!(
                        "{:?} is not an http:// URL with a host (e.g. \
                         \"http://127.0.0.1:4317\"){hint}",
                        raw.endpoint
                    ),
                );
                (String::new(), 0, String::new())
            }
        };
        if protocol == OtlpProtocol::Grpc && !url_path.is_empty() && url_path != "/" {
            self.push(
                format!("{path}.endpoint"),
                format!(
                    "{:?}: an OTLP/gRPC endpoint has no path (the service's is fixed)",
                    raw.endpoint
                ),
            );
        }
        let url_path = if url_path == "/" {
            "/v1/traces".to_owned()
        } else {
            url_path
        };
        let service_name = raw.service_name.clone().unwrap_or_else(|| "weir".into());
        if service_name.is_empty() {
            self.push(format!("{path}.service_name"), "must not be empty");
        }
        let batch_size = self.int(
            &format!("{path}.batch_size"),
            raw.batch_size,
            DEFAULT_BATCH,
            1,
            Some(100_000),
        );
        let queue_size = self.int(
            &format!("{path}.queue_size"),
            raw.queue_size,
            DEFAULT_QUEUE,
            1,
            Some(10_000_000),
        );
        if queue_size < batch_size {
            self.push(
                format!("{path}.queue_size"),
                format!("{queue_size} is smaller than batch_size ({batch_size})"),
            );
        }
        Otlp {
            endpoint: raw.endpoint.clone(),
            host,
            port,
            path: url_path,
            protocol,
            service_name,
            timeout: self.timeout(
                &format!("{path}.timeout"),
                raw.timeout.as_deref(),
                DEFAULT_TIMEOUT,
            ),
            interval: self.timeout(
                &format!("{path}.interval"),
                raw.interval.as_deref(),
                DEFAULT_INTERVAL,
            ),
            batch_size,
            queue_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::OtlpProtocol;

    fn load(otlp: &str) -> Result<crate::Config, String> {
        crate::load_str(&format!("[tracing]\n[tracing.otlp]\n{otlp}\n")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_paths() {
        let c = load("endpoint = \"http://127.0.0.1:4317\"").expect("valid");
        let o = c.tracing.and_then(|t| t.otlp).expect("otlp");
        assert_eq!(o.protocol, OtlpProtocol::Grpc);
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 4317));
        assert_eq!(o.service_name, "weir");
        assert_eq!((o.batch_size, o.queue_size), (512, 4096));
        let c = load("endpoint = \"http://collector:4318\"\nprotocol = \"http\"").expect("valid");
        let o = c.tracing.and_then(|t| t.otlp).expect("otlp");
        assert_eq!(o.path, "/v1/traces");
        let c = load("endpoint = \"http://[::1]:4318/otlp/v1/traces\"\nprotocol = \"http\"")
            .expect("valid");
        let o = c.tracing.and_then(|t| t.otlp).expect("otlp");
        assert_eq!(
            (o.host.as_str(), o.path.as_str()),
            ("::1", "/otlp/v1/traces")
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (body, key, words) in [
            (
                "endpoint = \"https://c:4317\"",
                "endpoint",
                "TLS to the collector",
            ),
            ("endpoint = \"c:4317\"", "endpoint", "not an http:// URL"),
            ("endpoint = \"http://c:4317/v1\"", "endpoint", "has no path"),
            (
                "endpoint = \"http://c:4317\"\nprotocol = \"udp\"",
                "protocol",
                "udp",
            ),
            (
                "endpoint = \"http://c:4317\"\nbatch_size = 0",
                "batch_size",
                "",
            ),
            (
                "endpoint = \"http://c:4317\"\nbatch_size = 100\nqueue_size = 10",
                "queue_size",
                "smaller than batch_size",
            ),
            (
                "endpoint = \"http://c:4317\"\ninterval = \"0s\"",
                "interval",
                "greater than 0",
            ),
            (
                "endpoint = \"http://c:4317\"\nflush = 1",
                "flush",
                "unknown key",
            ),
        ] {
            let e = load(body).expect_err(body);
            assert!(e.contains(&format!("tracing.otlp.{key}")), "{body}: {e}");
            assert!(e.contains(words), "{body}: {e}");
        }
    }
}
