#!/bin/sh
# One worker of a study shared by many processes, the command every cluster example runs.
# The first process to start creates the study (baseline measured once, under the database's
# lock); every process then runs trials until the study as a whole has $TOTAL completed.
# Settings come from the environment:
#   STUDY, STORAGE_URL, TOTAL (required); WORKLOAD (default digits), SPACE (default the shipped
#   default.yaml), TARGET (default cpu-torch), THREADS (default 1), DATA_DIR (optional).
set -eu
: "${STUDY:?set STUDY to the study name}"
: "${STORAGE_URL:?set STORAGE_URL, e.g. postgresql://user@host/db}"
: "${TOTAL:?set TOTAL to the completed trials the study should have}"
set -- study run --study "$STUDY" --storage "$STORAGE_URL" --total "$TOTAL" \
    --workload "${WORKLOAD:-digits}" --space "${SPACE:-search_spaces/default.yaml}" \
    --target "${TARGET:-cpu-torch}" --threads "${THREADS:-1}"
if [ -n "${DATA_DIR:-}" ]; then set -- "$@" --data-dir "$DATA_DIR"; fi
exec "${AUTOCOMPRESS:-autocompress}" "$@"
