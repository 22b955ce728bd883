"""The gateway's end-to-end stack for tests: fake upstreams, the real selector (over the real tritonserver) and
the real gateway on one event loop thread, as `routoo serve` runs them, plus what the gateway tests share:
the client key, a question, chat messages, readers for Prometheus samples and OpenAI-style errors, and
the chosen model and its runner-up for a prompt."""

import re

import httpx
import openai

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from predictor_service.triton_server import free_port
from selector.config import SelectorConfig
from selector.pool import Pool
from selector.server import create_server
from tests.support.upstreams import FakeUpstream, LoopThread

CLIENT_KEY_ENV, CLIENT_KEY = "ROUTOO_TEST_GATEWAY_KEY", "gateway-key-7d1e"
CANARY = "marmoset-canary-8812"            # prompt text that must never reach a log
QUESTION = ("Which gas makes up most of Earth's atmosphere?\nA. Oxygen\nB. Nitrogen\nC. Argon\nD. Carbon "
            "dioxide")
UPSTREAM_TIMEOUT_S = 1.0                   # the test gateway's read timeout: "slow" sleeps past it


def upstream_key(i: int) -> str:
    return f"upstream-key-{i}-secret"


class Stack:
    """Fake upstreams, the selector and the gateway on one event loop thread (as `routoo serve` runs them)."""

    def __init__(self, triton_url: str, pool_path, pool: Pool, upstreams: dict[str, FakeUpstream]):
        self.pool, self.upstreams, self.pool_path, self.triton_url = pool, upstreams, pool_path, triton_url
        self.loop = LoopThread()
        self.selector_port = free_port()
        self.start_selector()
        self.gateway = self.start_gateway()
        self.url = f"http://127.0.0.1:{self.gateway.port}"

    def start_selector(self) -> None:
        config = SelectorConfig(port=self.selector_port, triton_url=self.triton_url, pool_path=self.pool_path,
                                health_poll_s=0.2)
        self.selector, _ = self.loop.call(create_server(f"127.0.0.1:{self.selector_port}", config=config))
        self.loop.call(self.selector.start())

    def stop_selector(self) -> None:
        self.loop.call(self.selector.stop(0))

    def start_gateway(self, **overrides) -> GatewayServer:
        settings = dict(port=0, selector_address=f"127.0.0.1:{self.selector_port}", pool_path=self.pool_path,
                        api_key_env=CLIENT_KEY_ENV, upstream_timeout_s=UPSTREAM_TIMEOUT_S, max_body_bytes=256 * 1024)
        config = GatewayConfig(**{**settings, **overrides})

        async def start():
            server = GatewayServer(config)
            await server.start()
            return server
        return self.loop.call(start())

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30, **kwargs)

    def route(self, content: str, **body) -> dict:
        """The decision-only endpoint's answer for this user message."""
        r = httpx.post(self.url + "/v1/routoo/route", json={"prompt": content, **body},
                       headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def reset(self) -> None:
        for upstream in self.upstreams.values():
            upstream.reset()

    def received(self) -> dict[str, list[dict]]:
        return {name: u.received for name, u in self.upstreams.items() if u.received}

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def close(self) -> None:
        self.loop.call(self.gateway.stop())
        self.stop_selector()
        self.loop.close()
        for upstream in self.upstreams.values():
            upstream.stop()


def chat(content: str) -> list[dict]:
    return [{"role": "system", "content": "Answer with one letter."}, {"role": "user", "content": content}]


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" (\S+)"
    for line in text.splitlines():
        if not line.startswith("#"):
            found = re.fullmatch(pattern, line)
            if found:
                return float(found.group(1))
    return 0.0


def error_of(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def first_two(stack, content: str) -> tuple[str, str]:
    decision = stack.route(content)
    return decision["model"], decision["runners_up"][0]["model"]
