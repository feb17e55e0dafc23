"""The floor for a worker's idle memory: the fixed stack alone, none of the worker's code.

Run by bench_worker.py in its own process, measured like a worker: one Python process with a
started PJSUA2 endpoint (one UDP transport, null audio device, as the worker configures it),
a gRPC server with health checking and reflection and no service of its own, and a redis-py
client that has connected once (PING). Prints READY once all three are up, then idles until
it is terminated.
"""

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
import pjsua2 as pj
import redis
from bare_endpoint import start_endpoint
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()

    endpoint, _ = start_endpoint()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    server.add_insecure_port(f"127.0.0.1:{args.grpc_port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    print("READY", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # PJSUA2 is polled as the worker polls it: by its one thread, blocked in the SIP poll.
    while not stop.is_set():
        endpoint.libHandleEvents(100)
    server.stop(0)
    client.close()
    endpoint.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
    sys.exit(0)


if __name__ == "__main__":
    main()
