#!/usr/bin/env bash
# The demo behind `make demo`: everything on the embedded default (no server to start).
# Swords are generated, AtlasNet trains through the queue on a background worker, and the
# registered model reconstructs the held-out swords by its id, each fitted to its input
# (test-time refinement), and is scored against retrieval.
set -euo pipefail
COUNT=${DEMO_SWORDS:-120}
EPOCHS=${DEMO_EPOCHS:-40}
started=$(date +%s)
field() { python -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "== rodin config show"
rodin config show

echo; echo "== rodin datasets make swords --count $COUNT"
rodin datasets make swords --count "$COUNT"

echo; echo "== rodin submit train --dataset swords --epochs $EPOCHS"
job=$(rodin submit train --dataset swords --epochs "$EPOCHS")
rodin status "$job" --watch
model=$(rodin status "$job" --json | field '["final_model_id"]')
if [ "$model" = "None" ]; then
  echo "training job $job did not finish: rodin status $job"; exit 1
fi

echo; echo "== rodin reconstruct --model $model --wait"
rodin reconstruct --model "$model" --wait --out "reconstructions/demo-model-$model"

echo; echo "== rodin evaluate --model $model --wait   (the held-out swords, against copying the nearest training sword)"
rodin evaluate --model "$model" --wait --out "reconstructions/demo-model-$model"

echo; echo "== rodin models show $model"
rodin models show "$model" --plots "reconstructions/demo-model-$model"

echo; echo "== rodin report $model   (one HTML page: lineage, loss curves, metrics, evaluation, reconstructions)"
rodin report "$model" --out "reconstructions/demo-model-$model"

rodin down
echo; echo "Model $model: meshes (.ply, coloured by patch), pictures (.png) and the report (model-$model.html) are in reconstructions/demo-model-$model/"
echo "Demo wall time: $(( $(date +%s) - started )) s"
