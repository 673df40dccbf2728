"""GLM's attention kernels and the optional CPU layer, chosen per trace by glm_jax.kernels.select.

Every kernel computes the same function: softmax(q k^T) v under GLM's mask (query i sees key j
iff j < sep or j <= i, within its segment), q, k, v [B, T, N, D] with the keys pre-scaled.

  xla          plain einsums over a dense [B, T, T] mask: the reference path, any platform
  cudnn        cuDNN flash attention (jax.nn.dot_product_attention), GPUs: kernels/cudnn.py
  splash       Pallas splash attention, TPUs (interpret mode elsewhere): kernels/splash.py
  cpu_blocked  the CPU layer (kernels/cpu/): a blocked core with a hand-written backward and
               projections with row-major weight gradients, for one XLA:CPU device

GLMConfig.attention_kernel names one of them or 'auto' (select.choose: the fastest kernel the
mesh's platform supports for this call).
"""
