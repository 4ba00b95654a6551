"""I-LoRA in a real 2-process data-parallel run on CPU (gloo) against one process: accelerate gives each process a
slice of every batch (here the current rows to one process, the replayed rows to the other), so the consistency term
must follow the batch's ``replayed`` mask and be normalised like the CE for the two runs to agree."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.test_distributed import launch


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_ilora_on_two_processes_matches_one_process(tmp_path, small_data):
    def adapters(name: str, processes: int) -> dict[str, torch.Tensor]:
        launch(["train_slsd_seq.py", "--preset", "smoke", "--method", "ilora", "--data_dir", str(small_data),
                "--device", "cpu", "--tasks", "T2_math,T1_general", "--batch_size", "4", "--max_steps", "2",
                "--max_eval_samples", "2", "--lora_dropout", "0", "--ilora_lambda", "100", "--ilora_ema", "0.5",
                "--export_peft", "false", "--no_plots", "--log_dir", str(tmp_path / "logs"),
                "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name", name], processes)
        return load_file(str(tmp_path / "ckpt" / name / "stage_1_T1_general" / "adapters.safetensors"))

    one, two = adapters("ilora_one", 1), adapters("ilora_two", 2)
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, atol=1e-5, rtol=1e-4)
