"""Zero-shot: the re-summed stored contributions with the original classifier (METHODS §2.3).

Σ_k ĉ_k = ê, so this equals CLIP's own zero-shot prediction (decomposition logit test, §1.5).
"""

from __future__ import annotations

from clipbias.methods.api import MethodContext, MethodOutput


def predict(ctx: MethodContext) -> MethodOutput:
    return MethodOutput(ctx.predict(), {"classifier": "zero-shot"})
