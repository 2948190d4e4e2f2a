#!/usr/bin/env python3
"""Cross-checks what QLoRA for .NET writes against Hugging Face transformers + PEFT.

    python3 scripts/interop/check_peft.py BUNDLE_DIR

BUNDLE_DIR comes from the explicit test PeftInteropBundle (tests/QLoRA.Tests/Interop):
    QLORA_INTEROP_OUT=DIR dotnet test tests/QLoRA.Tests -c Release --filter "Category=Interop"
It holds base/ (a Hugging Face LLaMA directory we wrote), adapter/ (our PEFT adapter for it),
merged/ (our merge of the two) and logits.safetensors (our logits for token ids, base and adapted).

Checks (each prints a line; the exit code is the number of failures):
  1. transformers loads base/ and merged/ with no missing or unexpected keys;
  2. transformers' logits on base/ equal ours;
  3. PEFT loads adapter/ with every tensor used (the model's LoRA state equals the file), and
     the adapted logits equal ours;
  4. our merged/ gives the same logits, and the same weights as PEFT's merge_and_unload().
Tolerance: max |a - b| / max |b| < 1e-4 (fp32 on both sides; the sums run in different orders).
"""
import sys

import torch
from safetensors.torch import load_file

TOL = 1e-4
failures = 0


def check(what, ok, detail):
    global failures
    failures += 0 if ok else 1
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}", flush=True)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def main(d):
    import peft
    import transformers
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import LlamaForCausalLM

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    ref = load_file(f"{d}/logits.safetensors")
    ids = ref["ids"]

    def load(path):
        m, info = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        check(f"transformers loads {path.split('/')[-1]}/", not bad, bad or "no missing, unexpected or mismatched keys")
        return m.eval()

    base = load(f"{d}/base")
    with torch.no_grad():
        e = rel(base(ids).logits, ref["base"])
    check("base logits: transformers vs ours", e < TOL, f"max rel diff {e:.2e}")

    model = PeftModel.from_pretrained(base, f"{d}/adapter").eval()
    ours = load_file(f"{d}/adapter/adapter_model.safetensors")
    theirs = get_peft_model_state_dict(model)
    keys_ok = set(ours) == set(theirs)
    check("PEFT uses every adapter tensor", keys_ok,
          f"{len(ours)} tensors" if keys_ok else f"only ours: {sorted(set(ours) - set(theirs))[:4]}, only PEFT's: {sorted(set(theirs) - set(ours))[:4]}")
    if keys_ok:
        e = max(rel(theirs[k], ours[k]) for k in ours)
        check("PEFT's loaded LoRA weights equal the file", e == 0.0, f"max rel diff {e:.2e}")
    with torch.no_grad():
        adapted = model(ids).logits
    e = rel(adapted, ref["lora"])
    check("adapted logits: PEFT vs ours", e < TOL, f"max rel diff {e:.2e}")
    e = rel(adapted, ref["base"])
    check("the adapter changes the logits", e > 1e-3, f"max rel diff to base {e:.2e}")

    merged = load(f"{d}/merged")
    with torch.no_grad():
        e = rel(merged(ids).logits, ref["lora"])
    check("merged logits: transformers on our merge vs ours", e < TOL, f"max rel diff {e:.2e}")
    unloaded = model.merge_and_unload().state_dict()
    mine = merged.state_dict()
    e = max(rel(mine[k], unloaded[k]) for k in unloaded if k in mine)
    same_keys = set(unloaded) == set(mine)
    check("merged weights: ours vs PEFT's merge_and_unload", same_keys and e < 1e-5,
          f"{len(mine)} tensors, max rel diff {e:.2e}" + ("" if same_keys else ", key sets differ"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
    print(f"{failures} check(s) failed" if failures else "all checks passed")
    sys.exit(failures)
