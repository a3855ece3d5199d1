"""`python -m bench.answer_server`: the local API both CPU paths post to (bench/cpupath.py).

HTTP/1.1 with keep-alive, every POST answered 200 with a small JSON body at once. It runs in a
process of its own, so its CPU time is not counted in the paths measured.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = b'{"status":"accepted","id":"bench"}'


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection for every row
    # Headers and body in one send (buffered, flushed once per request) and no Nagle: else a
    # small second write waits for the client's delayed ACK, 40 ms a request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    do_PUT = do_POST

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    print(f"answering on http://127.0.0.1:{server.server_address[1]}/rows", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
