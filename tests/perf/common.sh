# Shared by the benchmarks (sourced).

# runc_bundle DIR TARBALL ARGS_JSON [PYTHON]: an OCI bundle in DIR of the root filesystem in
# TARBALL, from runc's default spec, running ARGS_JSON (a JSON list) without a terminal;
# PYTHON, if given, edits the spec `c` further.
runc_bundle() {
    local dir=$1 tarball=$2 args=$3 extra=${4:-}
    mkdir -p "$dir/rootfs"
    tar -C "$dir/rootfs" -xf "$tarball"
    (cd "$dir" && runc spec)
    python3 - "$dir/config.json" "$args" "$extra" <<'PY'
import json, sys
path, args, extra = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = args
exec(extra)
json.dump(c, open(path, "w"), indent=1)
PY
}
