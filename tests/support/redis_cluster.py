"""A local Redis Cluster of three masters (no replicas) on free loopback ports."""

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer, free_port


class RedisClusterOfThree:
    """Three cluster-enabled servers joined by `redis-cli --cluster create`."""

    def __init__(self, data_dir: Path) -> None:
        self.nodes = [self._node(data_dir / f"node-{index}") for index in range(3)]

    @staticmethod
    def _node(data_dir: Path) -> RedisServer:
        cluster_args = {
            "--cluster-enabled": "yes",
            "--cluster-config-file": str(data_dir / "nodes.conf"),
            # The bus port is port + 10000 unless set; that one need not be free.
            "--cluster-port": str(free_port()),
            "--cluster-node-timeout": "5000",
        }
        return RedisServer(
            data_dir, extra_args=tuple(a for pair in cluster_args.items() for a in pair)
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}?cluster=true"

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        redis_cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if redis_cli is None:
            raise RuntimeError("no redis-cli or valkey-cli on PATH (.ci/run installs redis-tools)")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                redis_cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while not all(self._is_ready(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node_serving(self, key: str) -> RedisServer:
        """The node whose slots hold `key`."""
        client = self.nodes[0].client()
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, primary, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                port = int(primary[1])
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no node serves slot {slot}")

    @staticmethod
    def _is_ready(node: RedisServer) -> bool:
        try:
            info = node.client().execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text
