"""Two network namespaces joined by a veth pair, for the benchmarks that
measure a network path (root only): `Link(tag, a_ip, b_ip, gbit)` makes
namespaces ck<tag>a<pid> and ck<tag>b<pid> with those addresses, each end
shaped to `gbit` with tbf (0: unshaped), and removes them on exit."""
import json
import os
import subprocess
import time


def sh(*args, check=True, timeout=120, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()[-2000:]}")
    return r


class Link:
    def __init__(self, tag, a_ip, b_ip, gbit):
        pid = os.getpid() % 100000
        self.ns = (f"ck{tag}a{pid}", f"ck{tag}b{pid}")
        self.devs = (f"{tag}a", f"{tag}b")
        self.ips = (a_ip, b_ip)
        self.gbit = gbit

    def __enter__(self):
        a, b = self.ns
        for ns in self.ns:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", self.devs[0], "netns", a, "type", "veth", "peer", "name", self.devs[1],
           "netns", b)
        for ns, dev, ip in zip(self.ns, self.devs, self.ips):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            if self.gbit > 0:  # 0: the veth unshaped (the CPUs are the limit)
                sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{self.gbit}gbit",
                   "burst", "4mbit", "latency", "50ms")
        return self

    def __exit__(self, *exc):
        for ns in self.ns:
            sh("ip", "netns", "del", ns, check=False)

    def iperf(self):
        """iperf3's received rate (bytes/s) from the first namespace to the second."""
        return iperf(self.ns[1], self.ns[0], self.ips[1])


def iperf(server_ns, client_ns, ip):
    """iperf3's received rate (bytes/s) from client_ns to ip in server_ns (None: this namespace)."""
    def inns(ns):
        return ["ip", "netns", "exec", ns] if ns else []

    server = subprocess.Popen([*inns(server_ns), "iperf3", "-s", "-1", "-B", ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = sh(*inns(client_ns), "iperf3", "-c", ip, "-t", "3", "-J", timeout=60).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8
    finally:
        server.wait(timeout=10)
