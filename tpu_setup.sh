#!/usr/bin/env bash
# Bootstraps rlcot on a Cloud TPU VM and, given a command, runs it: one host, or every worker
# of a pod slice at once. Idempotent (setup.sh only checks what is installed the second time).
#
#   bash tpu_setup.sh                       # set up this host, print its devices
#   bash tpu_setup.sh COMMAND...            # set up, then run COMMAND with the venv's python
#
# A whole pod, one command from your workstation (every worker clones or updates the repo,
# sets up, checks memory, and runs the study; jax.distributed.initialize() in rlcot.main finds
# the other hosts from the TPU metadata):
#
#   gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command="
#     git clone https://github.com/OWNER/rlcot.git rlcot 2>/dev/null || git -C rlcot pull --ff-only;
#     cd rlcot && bash tpu_setup.sh -m rlcot.main run --config experiments/recipes.py:qwen2.5_7b_v5p
#       --workdir /mnt/shared/runs/qwen7b 2>&1 | tee -a ~/rlcot.log"
#
# Every worker runs the same command: each loads its own block of every global prompt batch (the
# pipeline is deterministic in the seed), scores its own rows, and jax runs sampling and the
# update on the global mesh; process 0 writes the metrics and files. The workdir
# must be one directory every host mounts (e.g. Filestore / NFS): checkpoints are written by all
# hosts together and the same command resumes from them.
# Before spending TPU time, compile the study for the slice on any CPU machine with libtpu
# installed (no TPU needed): python -m rlcot.main compile --config ... --topology v5p-64.
#
# A multi-GPU host needs no bootstrap beyond `bash setup.sh cuda`: one process drives all its
# GPUs (the mesh spans jax.devices()):
#   bash setup.sh cuda && .venv/bin/python -m rlcot.main run \
#     --config experiments/recipes.py:qwen2.5_1.5b_gpu --workdir runs/q15 --config.mesh.fsdp=-1
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh tpu
if [ "$#" -eq 0 ]; then
  .venv/bin/python - <<'PY'
import jax
jax.distributed.initialize()
print(f"host {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
      f"{jax.device_count()} devices ({jax.devices()[0].device_kind})")
PY
  exit 0
fi
exec .venv/bin/python "$@"
