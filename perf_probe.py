import asyncio, subprocess, sys
from benchmarks.settings import QUICK
from benchmarks.suite import run_round_trips, upstream_for
from benchmarks.targets import SidecarProxy
from benchmarks.nginx import NginxProxy, find_nginx

async def main(which):
    up = upstream_for("path"); await up.start()
    p = SidecarProxy(up.port, "path") if which == "sidecar" else NginxProxy(find_nginx(), up.port, 1000)
    await p.start()
    try:
        await run_round_trips(p.port, "path", QUICK, 2000, 8)
        pids = ",".join(map(str, p.pids()))
        perf = await asyncio.to_thread(subprocess.Popen, ["perf", "record", "-g", "-o", f"/tmp/dataplane-perf-{which}.data", "-p", pids], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1)
        r = await run_round_trips(p.port, "path", QUICK, 30000, 32, pids=p.pids())
        perf.send_signal(2); await asyncio.to_thread(perf.wait)
        print(which, r.cpu_us_per_message)
    finally:
        p.stop(); up.stop()
asyncio.run(main(sys.argv[1]))
