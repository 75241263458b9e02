"""Single-stream decode probe: where the time of one greedy step goes on this CPU.

Measures, on the embedded SmolLM2-135M-Instruct, one prompt, 64 new tokens, each in its own
process (``--mode``/``--dtype``) or all in turn (no arguments):

- ``eager``: transformers' own loop with its dynamic KV cache (what the peers run);
- ``static``: a preallocated ``StaticCache`` with the decode step compiled by
  ``torch.compile`` through transformers' ``compile_config``; it prints the first call
  (compilation) and a second process shows the on-disk inductor cache at work;
- ``floor``: the bandwidth floor, one matrix-vector product over as many fp32 bytes as the
  model's weights and nothing else.

Greedy tokens are compared with eager decoding in the same dtype.

    python benchmarks/probe_decode.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = "Explain in three sentences why the sky is blue."


def decode(mode: str, dtype_name: str) -> None:
    import torch
    from transformers import StaticCache
    from transformers.generation import CompileConfig

    from expertrag import ExpertLLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    llm = ExpertLLM(dtype=dtype_name).load()
    model = llm.base_model.to(dtype)
    enc = llm.tokenizer(llm.render([{"role": "user", "content": PROMPT}]), return_tensors="pt",
                        add_special_tokens=False)
    compile_config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
    compile_config._compile_all_devices = True  # transformers compiles on CUDA only otherwise

    def run() -> list[int]:
        kwargs: dict = {"max_new_tokens": 64, "do_sample": False, "top_k": None,
                        "top_p": None, "temperature": None}
        if mode == "static":
            kwargs.update(past_key_values=StaticCache(config=model.config, max_cache_len=512),
                          compile_config=compile_config)
        with torch.inference_mode():
            return model.generate(**enc, **kwargs)[0, enc["input_ids"].shape[1]:].tolist()

    started = time.perf_counter()
    tokens = run()
    first = time.perf_counter() - started
    times = []
    for _ in range(3):
        started = time.perf_counter()
        tokens = run()
        times.append(time.perf_counter() - started)
    tps = len(tokens) / min(times)
    print(f"RESULT {mode} {dtype_name} first_call_s={first:.1f} tok_s={tps:.1f}"
          f" tokens={','.join(map(str, tokens))}", flush=True)


def floor() -> None:
    import torch

    weights = [torch.randn(1536, 576) for _ in range(150)]  # ~530 MB, the model's fp32 bytes
    x = torch.randn(1, 576)
    for _ in range(3):
        for w in weights:
            torch.nn.functional.linear(x, w)
    started, n = time.perf_counter(), 10
    for _ in range(n):
        for w in weights:
            torch.nn.functional.linear(x, w)
    step = (time.perf_counter() - started) / n
    print(f"RESULT floor fp32 matvec over 530 MB: {step * 1e3:.1f} ms per step "
          f"= at most {1 / step:.1f} tok/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["eager", "static", "floor"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    if args.mode == "floor":
        floor()
        return
    if args.mode:
        decode(args.mode, args.dtype)
        return
    results = {}
    runs = [("eager", "float32"), ("static", "float32"), ("static", "float32"),
            ("eager", "bfloat16"), ("static", "bfloat16"), ("floor", "float32")]
    for mode, dtype in runs:  # the second static run finds the inductor cache on disk
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--dtype", dtype],
                             capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        print(line.split(" tokens=")[0])
        if "tokens=" in line:
            results.setdefault((mode, dtype), line.split("tokens=")[1])
    for dtype in ("float32", "bfloat16"):
        same = results[("static", dtype)] == results[("eager", dtype)]
        print(f"{dtype}: compiled static-cache tokens equal eager: {same}")
    print(f"bfloat16 eager tokens equal float32 eager: "
          f"{results[('eager', 'bfloat16')] == results[('eager', 'float32')]}")


if __name__ == "__main__":
    main()
