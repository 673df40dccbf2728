#!/bin/sh
# GLM-Large train-step MFU (xla vs cudnn, seq 512 and 1024) and cached decoding on one GPU: JSON
# (--verbosity=0: the log names the attention kernel each call took).
cd "$(dirname "$0")/.." && exec python benchmarks/gpu_attention.py --verbosity=0 --output="${OUT:-.}/gpu_attention.json" "$@"
