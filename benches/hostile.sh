#!/usr/bin/env bash
# Hostile clients against the release `converto serve` (issue 9): for each case, what the
# server answers and how much its memory grows (VmRSS after the case and VmHWM, the peak, both
# against the idle server's). Needs python3; downloads nothing.
#
#   benches/hostile.sh                       # the cases as reported in issue 9
#   BODY_MIB=64 EVENTS=500 STALLED=100 benches/hostile.sh
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "needs python3" >&2; exit 1; }
cargo build --release --quiet -p converto-http --all-features
bin=target/release/converto
work=$(mktemp -d)
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# A route that copies text, so there is an artifact to ask ranges of.
cat >"$work/copy.toml" <<'EOF'
name = "copy"
[[route]]
source = "txt"
target = "copytxt"
program = "/bin/sh"
args = ["-c", "cp \"$0\" \"$1\"", "{input}", "{output}"]
output = "output.copytxt"
pass_env = ["PATH"]

[[route]]
source = "txt"
target = "slowtxt"
program = "/bin/sh"
args = ["-c", "sleep 30; cp \"$0\" \"$1\"", "{input}", "{output}"]
output = "output.slowtxt"
pass_env = ["PATH"]
EOF

CONVERTO_LOG=warn "$bin" --data-dir "$work/data" --routes "$work/copy.toml" serve \
  --listen 127.0.0.1:0 --header-timeout "${HEADER_TIMEOUT:-5s}" --idle-timeout "${IDLE_TIMEOUT:-10s}" \
  --max-connections "${MAX_CONNECTIONS:-256}" --max-event-streams "${MAX_EVENT_STREAMS:-64}" \
  >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 200); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.05; done
base=$(sed -n 's/^converto listening on //p' "$work/out")
[ -n "$base" ] || { cat "$work/err" >&2; exit 1; }

PID=$server BASE=$base BODY_MIB=${BODY_MIB:-512} EVENTS=${EVENTS:-3000} STALLED=${STALLED:-300} \
  OVER_CAP=${OVER_CAP:-400} STREAMS=${STREAMS:-100} python3 - <<'PY'
import json, os, socket, threading, time, urllib.request, uuid

pid, base = os.environ["PID"], os.environ["BASE"]
host, port = base.removeprefix("http://").split(":")
port = int(port)

def mem():
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            fields[k] = int(v.split()[0]) // 1024
    return fields["VmRSS"], fields["VmHWM"]

def connect():
    s = socket.create_connection((host, port))
    s.settimeout(120)
    return s

def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head = buf.split(b"\r\n\r\n")[0].decode(errors="replace")
    lines = head.split("\r\n")
    status = lines[0].split(" ")[1] if lines and " " in lines[0] else "none"
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return status, headers

def request(method, path, headers=None, body=None):
    req = urllib.request.Request(base + path, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

rss0, hwm0 = mem()
print(f"idle server: VmRSS {rss0} MiB, VmHWM {hwm0} MiB")
rows = []
last = [rss0]
def case(name, answer):
    rss, hwm = mem()
    rows.append((name, answer, rss - last[0], rss - rss0, hwm - hwm0))
    last[0] = rss

# 1. A huge chunked JSON body.
total = int(os.environ["BODY_MIB"]) << 20
s = connect()
s.sendall(b"POST /v1/conversions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
          b"Transfer-Encoding: chunked\r\n\r\n")
sent = [0]
def pump():
    chunk = b"%x\r\n" % 65536 + b"[" * 65536 + b"\r\n"
    try:
        while sent[0] < total:
            s.sendall(chunk)
            sent[0] += 65536
    except OSError:
        pass
t = threading.Thread(target=pump); t.start()
status, headers = read_head(s)
t.join(); s.close()
case(f"chunked JSON body of {total >> 20} MiB",
     f"{status} {headers.get('content-type')}; the server took {sent[0] >> 10} KiB before refusing")

# 2. Event streams of random ids, twice: the second round shows whether memory keeps growing.
n = int(os.environ["EVENTS"])
for round in ("", " (again)"):
    codes = {}
    for _ in range(n):
        c, _, _ = request("GET", f"/v1/conversions/{uuid.uuid4()}/events")
        codes[c] = codes.get(c, 0) + 1
    case(f"{n} /events on random ids{round}",
         ", ".join(f"{k} x{v}" for k, v in sorted(codes.items())))

# 3. Connections that send half a request line and stall.
n = int(os.environ["STALLED"])
socks = []
for _ in range(n):
    c = connect(); c.sendall(b"GET /v1/conver"); socks.append(c)
start = time.monotonic(); closed = 0
for c in socks:
    try:
        while c.recv(4096):
            pass
        closed += 1
    except OSError:
        closed += 1
    c.close()
case(f"{n} stalled half request lines",
     f"{closed}/{n} closed by the server, the last after {time.monotonic() - start:.1f} s")

# 4. Connections over the cap (the held ones send nothing; the idle timeout ends them).
n = int(os.environ["OVER_CAP"])
held = [connect() for _ in range(n)]
time.sleep(1.5)  # let the server accept them all and finish answering the ones over the cap
probe = connect(); probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
status, headers = read_head(probe); probe.close()
case(f"{n} idle connections, then one request",
     f"{status}, Retry-After {headers.get('retry-after')}, {headers.get('content-type')}")
for c in held:
    c.close()
# Wait until the server has seen them go (their places are free again).
for _ in range(600):
    try:
        if request("GET", "/healthz")[0] == 200:
            break
    except OSError:
        pass
    time.sleep(0.05)

# 5. Ranges on an artifact.
def submit(target, text):
    boundary = "hostile"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"target_format\"\r\n\r\n{target}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n"
            f"{text}\r\n--{boundary}--\r\n").encode()
    _, _, body = request("POST", "/v1/conversions",
                         {"Content-Type": f"multipart/form-data; boundary={boundary}"}, form)
    answer = json.loads(body)
    if "id" not in answer:
        raise SystemExit(f"submit failed: {answer}")
    return answer["id"]

cid = submit("copytxt", "hello hostile range")
for _ in range(1200):
    _, _, body = request("GET", f"/v1/conversions/{cid}")
    rec = json.loads(body)
    if rec["status"] == "succeeded":
        break
    time.sleep(0.05)
url = rec["artifacts"][0]["url"]
answers = []
for rng in ("bytes=0-18446744073709551615", "bytes=18446744073709551615-18446744073709551615",
            "bytes=99999999999999999999999-"):
    c, h, _ = request("GET", url, {"Range": rng})
    answers.append(f"{rng} -> {c} {h.get('content-range', '')}".strip())
case("ranges on an artifact", "; ".join(answers))

# 6. Event streams over the cap, on a conversion that runs for a while.
n = int(os.environ["STREAMS"])
slow = submit("slowtxt", "slow")
streams = []
for _ in range(n):
    c = connect()
    c.sendall(f"GET /v1/conversions/{slow}/events HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    streams.append(c)
codes = {}
for c in streams:
    status, _ = read_head(c)
    codes[status] = codes.get(status, 0) + 1
case(f"{n} concurrent /events streams", ", ".join(f"{k} x{v}" for k, v in sorted(codes.items())))
for c in streams:
    c.close()

# 7. Security headers on a 404.
c, h, body = request("GET", f"/v1/conversions/{uuid.uuid4()}")
case("GET an unknown conversion",
     f"{c}, X-Content-Type-Options {h.get('x-content-type-options')}, "
     f"X-Request-Id also in the body: {json.loads(body).get('request_id') == h.get('x-request-id')}")

rss, hwm = mem()
print()
print("| case | answer | VmRSS change in the case (MiB) | VmRSS over idle after it | VmHWM (peak) over idle |")
print("|---|---|---|---|---|")
for name, answer, dcase, drss, dhwm in rows:
    print(f"| {name} | {answer} | {dcase:+d} | {drss:+d} | {dhwm:+d} |")
PY
