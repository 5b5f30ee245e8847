"""Supervised fine-tuning of the recommender LM: SID tasks + TS-Align, model selection on valid HR@10.

Reads a run directory (items, splits, sids.json, token_semantics.json) and writes the best model, its tokenizer
and SID map to <run_dir>/checkpoints/sft (trainer checkpoints in <run_dir>/checkpoints/sft-trainer). All logic
lives in genrec.sft; the YAML fills GenRecSFTArguments, genrec.modeling.ModelConfig and TRL's SFTConfig, and any
flag on the command line overrides it.

Launch, exactly like TRL's own scripts (configs/accelerate/ holds the launcher configs):

    # CPU, one process: the synthetic demo, then the Industrial benchmark (about an hour)
    accelerate launch training/sft.py --config configs/sft/demo.yaml --run_dir runs/demo
    accelerate launch training/sft.py --config configs/sft/industrial-cpu.yaml
    # CPU, two processes (DDP over gloo)
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml training/sft.py --config configs/sft/demo.yaml
    # GPUs: single_gpu.yaml, multi_gpu.yaml (DDP), zero2.yaml / zero3.yaml (DeepSpeed)
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml training/sft.py \\
        --config configs/sft/qwen2.5-1.5b.yaml --run_dir runs/industrial
    # resume a killed run from its latest checkpoint; any flag overrides the YAML
    accelerate launch training/sft.py --config configs/sft/demo.yaml --resume_from_checkpoint auto
"""

import logging

from trl import TrlParser

from genrec.modeling import ModelConfig
from genrec.sft import SFT_DATACLASSES, GenRecSFTArguments, GenRecSFTConfig, train_sft


def main(script_args: GenRecSFTArguments, model_args: ModelConfig, training_args: GenRecSFTConfig) -> None:
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    train_sft(script_args, model_args, training_args)


def make_parser() -> TrlParser:
    return TrlParser(SFT_DATACLASSES)


if __name__ == "__main__":
    parser = make_parser()
    script_args, model_args, training_args = parser.parse_args_and_config()
    main(script_args, model_args, training_args)
