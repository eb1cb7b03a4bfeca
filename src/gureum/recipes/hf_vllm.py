"""Text generation of an imported causal LM through vLLM, on CUDA (the optional extra ``vllm``).

Only ``hf_model.text_engine`` chooses this, when vLLM is installed and the replica sees a GPU;
CPU replicas (and the tests) never import it. One call generates the whole answer (vLLM's
offline ``LLM`` has no per-token iterator), so a stream sends it as one piece; the prompt is
counted with the folder's own tokenizer, the completion by vLLM. The folder is read as the
transformers path reads it: safetensors only, no remote code, no hub.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from gureum.recipes import hf_generate
from gureum.recipes.text_generator import LanguageModel, Steps

GPU_SHARE_ENV = "GUREUM_VLLM_GPU_MEMORY"  # share of the GPU's memory vLLM may take


def language_model(folder: Path, tokenizer: Any) -> LanguageModel:
    from vllm import LLM, SamplingParams  # type: ignore[import-not-found, unused-ignore]

    share = float(os.environ.get(GPU_SHARE_ENV, "0.5"))
    llm = LLM(
        model=str(folder),
        tokenizer=str(folder),
        trust_remote_code=False,
        load_format="safetensors",
        gpu_memory_utilization=share,
    )
    lock = threading.Lock()  # the offline engine serves one caller at a time

    def stream(prompt: str, max_new: int, temperature: float, seed: int) -> Steps:
        params = SamplingParams(max_tokens=max_new, temperature=temperature, seed=seed)
        with lock:
            out = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        yield str(out.text), len(out.token_ids)
        return "stop" if out.finish_reason == "stop" else "length"

    def no_training(model: Any, window: Any) -> Any:
        raise NotImplementedError("a vLLM model is served, not trained")

    return LanguageModel(
        llm,
        lambda text: hf_generate.encode(tokenizer, text),
        no_training,
        stream,
        hf_generate.chat_format(tokenizer),
    )
