"""The CPU layer: kernels written for XLA:CPU on one device (values equal the plain ops).

attention.py: the blocked attention core with a hand-written backward; matmul.py: projections
whose weight gradients are row-major matmuls. The network turns them on through
glm_jax.kernels.select (attention_kernel 'auto' on a single-device CPU, or 'cpu_blocked');
on GPUs, TPUs and sharded meshes the compilers choose these layouts themselves.
dropout.py: the hash dropout every dropout of the network draws with dropout_implementation
'hash' (the default, on any platform; threefry costs XLA:CPU ~100x more).
host_memory.py: the host allocator for XLA:CPU's buffers; every command-line tool re-runs
itself with it before JAX starts (light: no JAX import).
"""
