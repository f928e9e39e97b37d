"""Train the tiny QUADS experiment under torchrun (gloo); each rank saves its final weights.

    torchrun --nproc_per_node=2 tests/ddp_train.py MANIFEST OUTPUT TINY_DIR BASE_DIR
"""

import os
import sys
from pathlib import Path

import speechbrain as sb
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from training_setup import make_brain, make_dataset  # noqa: E402


def main() -> None:
    manifest, output, tiny_dir, base_dir = sys.argv[1:5]
    run_opts = {"distributed_backend": "gloo"}
    sb.utils.distributed.ddp_init_group(run_opts)
    data, _ = make_dataset(Path(manifest))
    overrides = {"mct_iterations": 1, "final_quant_epochs": 1}  # D, Q, Q
    brain, hparams = make_brain(Path(output), tiny_dir, base_dir, overrides, run_opts=run_opts)
    brain.fit(hparams["epoch_counter"], data, data,
              train_loader_kwargs=hparams["dataloader_options"],
              valid_loader_kwargs={"batch_size": 8})
    state = {k: v.detach().contiguous() for k, v in brain.deployable.state_dict().items()}
    save_file(state, str(Path(output) / f"rank{os.environ['RANK']}.safetensors"),
              metadata={"epochs": str(hparams["epoch_counter"].current),
                        "samples_seen": str(len(brain.targets))})


if __name__ == "__main__":
    main()
