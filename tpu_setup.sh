#!/usr/bin/env bash
# Bootstraps rlcot on a Cloud TPU VM, one host or every worker of a pod slice.
#
# One host:   bash tpu_setup.sh
# A pod:      gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \
#               --command="git clone REPO rlcot && cd rlcot && bash tpu_setup.sh"
# then run the same experiment command on every worker (--worker=all); rlcot.main calls
# jax.distributed.initialize(), which discovers the other hosts from the TPU metadata. Every
# host draws the same global prompt batch (the pipeline is deterministic in the seed) and
# jax places each host's shards of it on that host's devices.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh tpu
.venv/bin/python - <<'PY'
import jax
jax.distributed.initialize()
print(f"host {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
      f"{jax.device_count()} devices ({jax.devices()[0].device_kind})")
PY
