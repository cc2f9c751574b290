"""llama_cpp: llama.cpp's llama-server, what workstation-GPU owners run (directly, or through
ollama and LM Studio), started by the harness on 127.0.0.1 and driven by the OpenAI client.

The server is the one scripts/build_llama_server.sh built (backends.llama_cpp.install); the
checkpoint is converted once to GGUF by llama.cpp's own converter (backends.llama_cpp.gguf_checkpoint,
MXFP4 experts staying MXFP4). Requests go to llama-server's native /completion, which streams
every generated token's id: token-id prompts, exactly `new_tokens` greedy tokens (ignore_eos,
temperature 0) and no prompt cache (cache_prompt false), so every repeat pays its prefill. One
slot per sequence of the largest batch, each with the longest sequence's context.
"""

from __future__ import annotations

from harness.engine import LoadRequest
from backends.llama_cpp import install, log
from backends.llama_cpp.gguf_checkpoint import gguf_checkpoint
from backends.openai_endpoint import OpenAIEndpoint
from backends.openai_endpoint.server import HOST, ServerProcess, free_port


class LlamaCpp(OpenAIEndpoint):
    completions_path = "/completion"

    def __init__(self, server: str | None = None, source: str | None = None, flash_attn: str = "auto",
                 serve_args: list[str] | None = None, ready_timeout_s: float = 600.0, env: dict | None = None,
                 **client_options):
        client_options.setdefault("extra_body", {"cache_prompt": False})
        super().__init__(server=server, source=source, flash_attn=flash_attn, serve_args=serve_args,
                         ready_timeout_s=ready_timeout_s, env={k: str(v) for k, v in (env or {}).items()},
                         **client_options)
        self.install: install.Install | None = None

    @classmethod
    def problems(cls, quant: str, device: str, options: dict) -> list[str]:
        """A missing llama-server refuses the sweep before anything runs (quants: mxfp4 and bf16,
        the class default; llama.cpp has no MXFP8 activations)."""
        try:
            install.find(options.get("server"), options.get("source"), device)
        except install.NotBuilt as e:
            return [str(e)]
        return []

    def serve(self, request: LoadRequest) -> ServerProcess:
        o = self.options
        self.install = install.find(o["server"], o["source"], request.device)
        gguf = gguf_checkpoint(request, self.install)
        port, slots = free_port(), request.max_batch_size
        command = [self.install.server, "-m", gguf, "--host", HOST, "--port", port, "--alias", request.spec.name,
                   "-np", slots, "-c", slots * request.max_seq_len, "--no-kv-unified",
                   "-ngl", "0" if request.device == "cpu" else "all", "-fa", o["flash_attn"],
                   "--fit", "off",  # the context and layers asked for, not ones llama.cpp shrinks to fit
                   "--cache-ram", "0",  # no prompt states kept between requests
                   "--seed", request.seed, "--no-webui",
                   "-lv", "4",  # the model loader's and context's lines, which engine_path and memory read
                   *(o["serve_args"] or [])]
        return ServerProcess("llama-server", command, port, env=o["env"], ready_timeout_s=o["ready_timeout_s"])

    def columns(self) -> dict:
        return {**super().columns(), "engine_path": log.engine_path(self.server.log_text())}

    def memory(self) -> dict[str, float | None]:
        return log.memory(self.server.log_text())

    def version(self) -> str:
        return self.install.version if self.install else ""
