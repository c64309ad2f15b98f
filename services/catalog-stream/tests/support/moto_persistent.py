"""moto's S3 server with its state kept on disk across restarts, for outage tests.

moto keeps buckets and objects in memory, so a plain `moto_server` that is killed and started
again comes back empty, which no real S3 does. moto's own recorder (MOTO_ENABLE_RECORDING)
appends every request, body included, to a file as it arrives; this launcher replays that file
into the fresh process BEFORE it listens, so no client can reach a half-restored server (moto's
`/moto-api/recorder/replay-recording` would replay over HTTP only after the port is open).
Replaying reads too is harmless, and object keys here are content-addressed, so a recorded PUT
whose answer was cut by the kill lands on the same key the client retries.

Usage: python moto_persistent.py HOST PORT RECORDING_FILE
"""

import base64
import json
import os
import sys


def main() -> None:
    host, port, recording = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # moto reads these when its modules are imported.
    os.environ["MOTO_ENABLE_RECORDING"] = "1"
    os.environ["MOTO_RECORDER_FILEPATH"] = recording
    os.environ.setdefault("MOTO_PORT", str(port))

    from werkzeug.serving import run_simple
    from werkzeug.test import Client

    from moto.moto_api import recorder
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    app = DomainDispatcherApplication(create_backend_app)
    replayed = 0
    if os.path.exists(recording):
        with open(recording) as file:
            entries = [json.loads(line) for line in file if line.strip()]
        # Requests replayed now are already in the file: do not record them twice.
        recorder.stop_recording()
        client = Client(app)
        for entry in entries:
            body = entry.get("body") or b""
            if entry.get("body_encoded"):
                body = base64.b64decode(body)
            headers = dict(entry.get("headers") or {})
            # The body is replayed whole: a chunked transfer header would make werkzeug wait
            # for chunks that never come.
            headers.pop("Transfer-Encoding", None)
            headers.pop("transfer-encoding", None)
            response = client.open(
                entry["url"], method=entry["method"], headers=headers, data=body
            )
            response.close()
            replayed += 1
        recorder.start_recording()
    print(f"moto_persistent: replayed {replayed} requests from {recording}", flush=True)

    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
