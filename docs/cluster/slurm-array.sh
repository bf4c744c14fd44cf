#!/bin/bash
# N workers on one PostgreSQL study as a Slurm job array: `sbatch docs/cluster/slurm-array.sh`.
# Every array task runs the same command (docs/cluster/worker.sh): the first creates the study,
# all of them run trials until the study has TOTAL completed, shared exactly.
#SBATCH --job-name=autocompress-digits-1
#SBATCH --array=1-8
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=02:00:00
#SBATCH --constraint=icelake   # latency compares only on the same hardware: one node type
#SBATCH --output=autocompress-%A_%a.log
set -euo pipefail
export STUDY=digits-1 TOTAL=40 WORKLOAD=digits TARGET=cpu-torch THREADS=1
export STORAGE_URL=${STORAGE_URL:-postgresql://autocompress@db.example/studies}
source "${AUTOCOMPRESS_VENV:-$HOME/autocompress/.venv}/bin/activate"
cd "${SLURM_SUBMIT_DIR}"   # studies/ (artifacts, recipes, baseline cache) on the shared filesystem
exec docs/cluster/worker.sh
