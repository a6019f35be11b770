"""A client written with gpsd's own Python library (Debian's python3-gps), run by the system
Python: prints, one JSON line per report, what the library understood of it.

usage: python3 gps_client.py PORT
"""

import json
import sys

import gps  # type: ignore[import-not-found]  # python3-gps, in the system Python only


def main() -> None:
    session = gps.gps(host="127.0.0.1", port=int(sys.argv[1]), mode=gps.WATCH_ENABLE)
    for report in session:
        if not hasattr(report, "get"):
            continue  # a line that is not JSON (none expected while watching JSON)
        cls = report.get("class")
        out = {"class": cls}
        if cls == "TPV":
            fix = session.fix
            out.update(mode=fix.mode, time=fix.time, lat=fix.latitude, lon=fix.longitude)
            out.update(altMSL=fix.altMSL, speed=fix.speed, device=session.device)
        elif cls == "SKY":
            out.update(
                satellites=len(session.satellites),
                used=session.satellites_used,
                prns=[s.PRN for s in session.satellites],
            )
        elif cls == "VERSION":
            out.update(release=session.version["release"])
        print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
