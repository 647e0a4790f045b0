#!/usr/bin/env python3
"""Real peers for weir's layer-7 tests: gRPC (grpcio), WebSocket
(websockets) and server-sent events. Servers run until killed; clients print
one JSON object and exit. Every wait has a timeout.

    peers.py grpc-server PORT
    peers.py grpc-client HOST:PORT
    peers.py grpc-call HOST:PORT METHOD
    peers.py ws-server PORT
    peers.py ws-client URL COUNT [IDLE_SECONDS]
    peers.py sse-server PORT
    peers.py sse-client HOST:PORT PATH
    peers.py otlp-grpc PORT
    peers.py otlp-http PORT

The OTLP receivers (opentelemetry-proto's messages and service) print each
span they receive as one JSON line on stdout.
"""
import asyncio
import json
import socket
import sys
import time

SERVICE = "weir.test.Echo"


def grpc_server(port):
    from concurrent import futures

    import grpc

    def unary(request, context):
        return b"echo:" + request

    def server_stream(request, context):
        for i in range(int(request)):
            yield f"part {i}".encode()

    def client_stream(requests, context):
        return b"+".join(requests)

    def bidi(requests, context):
        for r in requests:
            yield b"bidi:" + r

    def fail(request, context):
        context.set_trailing_metadata((("x-why", "testing"),))
        context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")

    def slow(request, context):
        time.sleep(3)
        return request

    def stall(request, context):
        yield b"part 0"
        time.sleep(3)
        yield b"part 1"

    def ticker(requests, context):
        # Ten ticks over 2.5 s, whatever the client sends meanwhile.
        for i in range(10):
            yield f"tick {i}".encode()
            time.sleep(0.25)

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Stall": grpc.unary_stream_rpc_method_handler(stall),
        "Ticker": grpc.stream_stream_rpc_method_handler(ticker),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def grpc_client(target):
    import grpc

    out = {}
    with grpc.insecure_channel(target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        m = lambda kind, name: getattr(ch, kind)(f"/{SERVICE}/{name}")
        out["unary"] = m("unary_unary", "Unary")(b"hi", timeout=10).decode()
        out["server_stream"] = [
            x.decode() for x in m("unary_stream", "ServerStream")(b"3", timeout=10)
        ]
        out["client_stream"] = m("stream_unary", "ClientStream")(
            iter([b"a", b"b", b"c"]), timeout=10
        ).decode()
        out["bidi"] = [
            x.decode() for x in m("stream_stream", "Bidi")(iter([b"1", b"2"]), timeout=10)
        ]
        try:
            m("unary_unary", "Fail")(b"x", timeout=10)
            out["fail"] = "no error"
        except grpc.RpcError as e:
            out["fail"] = {
                "code": e.code().name,
                "details": e.details(),
                "trailers": dict(e.trailing_metadata() or ()),
            }
    print(json.dumps(out))


def grpc_call(target, method):
    import grpc

    with grpc.insecure_channel(target) as ch:
        try:
            r = ch.unary_unary(f"/{SERVICE}/{method}")(b"x", timeout=10)
            print(json.dumps({"code": "OK", "reply": r.decode()}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details()}))


def grpc_stream(target, method):
    import grpc

    parts = []
    with grpc.insecure_channel(target) as ch:
        try:
            for x in ch.unary_stream(f"/{SERVICE}/{method}")(b"x", timeout=10):
                parts.append(x.decode())
            print(json.dumps({"code": "OK", "parts": parts}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details(), "parts": parts}))


def grpc_quiet(target):
    """A bidirectional call whose client sends one message, then nothing
    for 2.7 s while the server streams its ticks."""
    import grpc

    def sends():
        yield b"start"
        time.sleep(2.7)
        yield b"end"

    parts = []
    with grpc.insecure_channel(target) as ch:
        try:
            for x in ch.stream_stream(f"/{SERVICE}/Ticker")(sends(), timeout=10):
                parts.append(x.decode())
            print(json.dumps({"code": "OK", "parts": parts}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details(), "parts": parts}))


def ws_server(port):
    import websockets

    async def echo(ws):
        async for message in ws:
            await ws.send("echo:" + message)

    async def main():
        async with websockets.serve(echo, "127.0.0.1", port):
            await asyncio.Future()

    asyncio.run(main())


def ws_client(url, count, idle):
    import websockets

    async def main():
        out = {"replies": []}
        async with websockets.connect(url, open_timeout=10, close_timeout=5) as ws:
            for i in range(count):
                await ws.send(f"m{i}")
                out["replies"].append(await asyncio.wait_for(ws.recv(), 10))
            if idle:
                began = time.monotonic()
                try:
                    await asyncio.wait_for(ws.recv(), idle + 10)
                    out["after_idle"] = "message"
                except websockets.ConnectionClosed:
                    out["after_idle"] = "closed"
                out["closed_after"] = round(time.monotonic() - began, 2)
        print(json.dumps(out))

    asyncio.run(main())


def sse_server(port):
    async def handle(reader, writer):
        try:
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
                pass
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            await writer.drain()
            for i in range(3):
                event = f"data: event {i}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(1.0)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def sse_client(target, path):
    host, port = target.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: sse\r\nAccept: text/event-stream\r\n\r\n".encode())
    began = time.monotonic()
    seen, buf, arrivals = set(), b"", []
    while len(arrivals) < 3:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        for i in range(3):
            if i not in seen and f"data: event {i}".encode() in buf:
                seen.add(i)
                arrivals.append(round(time.monotonic() - began, 3))
    print(json.dumps({"arrivals": arrivals}))


def print_spans(request):
    """One JSON line per span of an ExportTraceServiceRequest."""
    for rs in request.resource_spans:
        resource = {a.key: a.value.string_value for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for span in ss.spans:
                attributes = {}
                for a in span.attributes:
                    kind = a.value.WhichOneof("value")
                    attributes[a.key] = getattr(a.value, kind) if kind else None
                print(json.dumps({
                    "service": resource.get("service.name"),
                    "scope": ss.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": span.kind,
                    "status": span.status.code,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": attributes,
                }), flush=True)


def otlp_grpc(port):
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            print_spans(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def otlp_http(port):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            ok = self.path == "/v1/traces" and \
                self.headers.get("content-type") == "application/x-protobuf"
            if ok:
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                print_spans(request)
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if ok else 400)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "grpc-server":
        grpc_server(int(args[0]))
    elif cmd == "grpc-client":
        grpc_client(args[0])
    elif cmd == "grpc-stream":
        grpc_stream(*args)
    elif cmd == "grpc-call":
        grpc_call(args[0], args[1])
    elif cmd == "grpc-quiet":
        grpc_quiet(args[0])
    elif cmd == "ws-server":
        ws_server(int(args[0]))
    elif cmd == "ws-client":
        ws_client(args[0], int(args[1]), float(args[2]) if len(args) > 2 else 0)
    elif cmd == "sse-server":
        sse_server(int(args[0]))
    elif cmd == "sse-client":
        sse_client(args[0], args[1])
    elif cmd == "otlp-grpc":
        otlp_grpc(int(args[0]))
    elif cmd == "otlp-http":
        otlp_http(int(args[0]))
    else:
        sys.exit(f"unknown command {cmd}")
