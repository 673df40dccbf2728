"""Language-model evaluation of GLM: LAMBADA, WikiText perplexity, XSum (GLM_SPEC.md section 7)."""
