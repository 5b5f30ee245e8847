"""GRPO post-training of the recommender LM: trie-constrained rollouts, interest-aware rewards, KL to the SFT model.

Starts from <run_dir>/checkpoints/sft (the sft stage), writes the model selected on valid (constrained beam search,
NDCG@10 by default) with its tokenizer and SID map to <run_dir>/checkpoints/grpo, trainer checkpoints to
<run_dir>/checkpoints/grpo-trainer. All logic lives in genrec.grpo; the YAML fills GenRecGRPOArguments (rewards,
rollout, selection) and TRL's GRPOConfig (group size, KL, loss, optimiser), and any flag on the command line
overrides it.

Launch, exactly like TRL's own scripts (configs/accelerate/ holds the launcher configs):

    # CPU, one process: the synthetic demo, then the Industrial benchmark (under an hour)
    accelerate launch training/grpo.py --config configs/grpo/demo.yaml --run_dir runs/demo
    accelerate launch training/grpo.py --config configs/grpo/industrial-cpu.yaml
    # CPU, two processes (DDP over gloo)
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml training/grpo.py --config configs/grpo/demo.yaml
    # GPUs: single_gpu.yaml, multi_gpu.yaml (DDP), zero2.yaml / zero3.yaml (DeepSpeed)
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml training/grpo.py \\
        --config configs/grpo/qwen2.5-1.5b.yaml --run_dir runs/industrial
    # resume a killed run from its latest checkpoint; any flag overrides the YAML
    accelerate launch training/grpo.py --config configs/grpo/demo.yaml --resume_from_checkpoint auto
"""

import logging

from trl import TrlParser

from genrec.grpo import GRPO_DATACLASSES, GenRecGRPOArguments, GenRecGRPOConfig, train_grpo


def main(script_args: GenRecGRPOArguments, training_args: GenRecGRPOConfig) -> None:
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    train_grpo(script_args, training_args)


def make_parser() -> TrlParser:
    return TrlParser(GRPO_DATACLASSES)


if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args = parser.parse_args_and_config()
    main(script_args, training_args)
