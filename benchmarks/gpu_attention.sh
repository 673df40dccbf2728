#!/bin/sh
# GLM-Large train-step MFU (xla vs cudnn, seq 512 and 1024) and cached decoding on one GPU: JSON.
cd "$(dirname "$0")/.." && exec python benchmarks/gpu_attention.py --output="${OUT:-.}/gpu_attention.json" "$@"
