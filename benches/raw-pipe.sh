#!/usr/bin/env bash
# One "raw COPY" pipe, the baseline hyperfill is measured against
# (see docs/benchmarks.md):
#
#   psql source -c 'COPY (SELECT * FROM ONLY rel) TO STDOUT (FORMAT binary)' \
#     | psql target -c 'COPY rel FROM STDIN (FORMAT binary)'
#
# Usage: raw-pipe.sh RELATION...   (each an already-quoted "schema"."table";
# the target relation has the same name, as after a pg_dump restore).
# benches/bench.py runs it under `xargs -P N -n 1`, with
#   HFB_PSQL  psql binary
#   HFB_SRC   source database URL
#   HFB_TGT   target database URL
set -euo pipefail
: "${HFB_PSQL:?}" "${HFB_SRC:?}" "${HFB_TGT:?}"
for rel in "$@"; do
    "$HFB_PSQL" -X -q -v ON_ERROR_STOP=1 -d "$HFB_SRC" \
        -c "COPY (SELECT * FROM ONLY $rel) TO STDOUT (FORMAT binary)" \
        | "$HFB_PSQL" -X -q -v ON_ERROR_STOP=1 -d "$HFB_TGT" \
            -c "COPY $rel FROM STDIN (FORMAT binary)"
done
