"""Identity-provider tokens and mutual TLS, through the real edge, agent and upload services.

One stack for the whole module: every service verifies tokens from a local OIDC provider
(`tests.fakes.identity_provider`: discovery, RSA and EC keys) with a tenant claim named by a URL and
a list-valued role claim mapped to our roles, and every gRPC hop (edge -> agent, edge -> upload,
agent -> upload) runs over mTLS with certificates from a throwaway CA. The JWKS cache lives
`KEY_TTL_S`, so key rotation and withdrawal are observable within a test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
from chatkit.types import Thread, ThreadCreatedEvent
from cryptography.hazmat.primitives import serialization
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import Settings
from services.common.grpc_tls import client_channel
from switchboard.v1 import chat_pb2, chat_pb2_grpc, thread_pb2
from tests.fakes.identity_provider import IdentityProvider, running_identity_provider
from tests.support.certificates import SERVER_NAME, Pki, make_pki
from tests.support.chatkit_wire import THREAD_PAGE, assistant_text, call, request, stream, user_input
from tests.support.processes import Stack, running_stack

TENANT_CLAIM = "https://switchboard.test/tenant"
KEY_TTL_S = 2.0
ATTACKED_TENANT = "mallory"


@dataclass
class IdentityStack:
    stack: Stack
    idp: IdentityProvider
    pki: Pki

    def client_settings(self, *, certificate: bool = True) -> Settings:
        """What an internal caller with (or without) a client certificate configures."""
        return Settings(
            grpc_tls_ca=self.pki.ca,
            grpc_tls_cert=self.pki.client.cert if certificate else None,
            grpc_tls_key=self.pki.client.key if certificate else None,
            grpc_tls_server_name=SERVER_NAME,
        )

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityStack]:
    root = tmp_path_factory.mktemp("identity")
    pki = make_pki(root / "pki")
    with running_identity_provider() as idp:
        idp.tenant_claim = TENANT_CLAIM
        env = idp.service_env(
            SWITCHBOARD_TENANT_CLAIM=TENANT_CLAIM,
            SWITCHBOARD_ROLE_CLAIM="groups",
            SWITCHBOARD_ROLE_MAP="Admins=admin,HR=hr",
            SWITCHBOARD_JWKS_CACHE_TTL_S=str(KEY_TTL_S),
            SWITCHBOARD_JWKS_MIN_REFRESH_S="0",
            SWITCHBOARD_GRPC_TLS_CERT=str(pki.server.cert),
            SWITCHBOARD_GRPC_TLS_KEY=str(pki.server.key),
            SWITCHBOARD_GRPC_TLS_CA=str(pki.ca),
            SWITCHBOARD_GRPC_TLS_SERVER_NAME=SERVER_NAME,
            SWITCHBOARD_GRPC_REFLECTION="false",
        )
        with running_stack(root / "data", **env) as stack:
            yield IdentityStack(stack, idp, pki)


@pytest.fixture
async def agent(identity: IdentityStack) -> AsyncIterator[chat_pb2_grpc.ChatServiceAsyncStub]:
    """A ChatService stub over mTLS, as an internal service with a certificate calls it."""
    async with client_channel(identity.stack.agent_address, identity.client_settings()) as channel:
        yield chat_pb2_grpc.ChatServiceStub(channel)


def _input(text: str) -> chat_pb2.UserMessageInput:
    return chat_pb2.UserMessageInput(
        content=[thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))],
        inference_options=thread_pb2.InferenceOptions(),
    )


async def _threads(http: aiohttp.ClientSession, identity: IdentityStack, token: str) -> list[Thread]:
    body = await call(
        http, identity.stack.edge_url, request("threads.list", limit=100), identity.headers(token)
    )
    return list(THREAD_PAGE.validate_python(body).data)


# --------------------------------------------------------------------------- valid tokens


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_a_provider_token_runs_a_conversation_end_to_end(
    http: aiohttp.ClientSession, identity: IdentityStack, algorithm: str
) -> None:
    idp = identity.idp
    kid = next(kid for kid in idp.published if idp.keys[kid].algorithm == algorithm)
    token = idp.token(kid=kid, tenant=f"tenant-{algorithm.lower()}", groups=["Staff", "HR"])
    events = await stream(
        http,
        identity.stack.edge_url,
        request("threads.create", input=user_input("Hello!")),
        identity.headers(token),
    )
    assert isinstance(events[0], ThreadCreatedEvent)
    assert assistant_text(events)
    listed = await _threads(http, identity, token)
    assert [thread.id for thread in listed] == [events[0].thread.id]


async def test_a_direct_upload_goes_through_the_upload_service_over_mtls(
    http: aiohttp.ClientSession, identity: IdentityStack
) -> None:
    token = identity.idp.token(tenant="uploader")
    form = aiohttp.FormData()
    form.add_field("file", b"hello, attachments", filename="note.txt", content_type="text/plain")
    async with http.post(
        f"{identity.stack.edge_url}/chatkit/api/upload", data=form, headers=identity.headers(token)
    ) as response:
        body = await response.json()
        assert response.status == 200, body
    assert body["name"] == "note.txt"


async def test_the_tenant_comes_from_the_url_named_claim(
    http: aiohttp.ClientSession, identity: IdentityStack
) -> None:
    idp = identity.idp
    mine = idp.token(tenant="globex", sub="hank", groups="Nobody")  # unmapped role: user
    events = await stream(
        http,
        identity.stack.edge_url,
        request("threads.create", input=user_input("Hi")),
        identity.headers(mine),
    )
    thread_id = events[0].thread.id  # type: ignore[union-attr]
    again = idp.token(tenant="globex", sub="hank", groups=["Admins", "HR"])
    assert thread_id in [t.id for t in await _threads(http, identity, again)]
    other_tenant = idp.token(tenant="initech", sub="hank")
    assert thread_id not in [t.id for t in await _threads(http, identity, other_tenant)]


async def test_a_rotated_key_is_accepted_and_a_removed_one_refused_once_the_cache_expires(
    http: aiohttp.ClientSession, identity: IdentityStack, agent: chat_pb2_grpc.ChatServiceAsyncStub
) -> None:
    idp = identity.idp
    old = idp.add_key("RS256")
    old_token = idp.token(kid=old.kid, tenant="rotation")
    assert await _threads(http, identity, old_token) == []  # a kid unknown until now: one refetch

    new = idp.add_key("ES256")  # rotation: the provider publishes a new key and signs with it
    new_token = idp.token(kid=new.kid, tenant="rotation")
    assert await _threads(http, identity, new_token) == []
    await agent.ListThreads(chat_pb2.ListThreadsRequest(limit=5), metadata=_bearer(new_token), timeout=10)

    idp.remove(old.kid)
    await asyncio.sleep(KEY_TTL_S + 1)
    body = await call(
        http,
        identity.stack.edge_url,
        request("threads.list", limit=5),
        identity.headers(old_token),
        status=401,
    )
    assert "unknown signing key" in body["error"]["message"], body
    with pytest.raises(aio.AioRpcError) as refused:
        await agent.ListThreads(chat_pb2.ListThreadsRequest(limit=5), metadata=_bearer(old_token), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await _threads(http, identity, new_token) == []  # the new key still works


# --------------------------------------------------------------------------- attacks


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_signed(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWT assembled by hand, for what PyJWT refuses to produce (HMAC with a public key)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _alg_none(idp: IdentityProvider) -> str:
    return jwt.encode(
        idp.claims(tenant=ATTACKED_TENANT), None, algorithm="none", headers={"kid": idp.published[0]}
    )


def _hs256_with_public_key(idp: IdentityProvider) -> str:
    pair = idp.keys[idp.published[0]]
    public_pem = pair.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _hand_signed(
        {"alg": "HS256", "typ": "JWT", "kid": pair.kid},
        idp.claims(tenant=ATTACKED_TENANT),
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )


def _wrong_kid(idp: IdentityProvider) -> str:
    rsa_kid = next(kid for kid in idp.published if idp.keys[kid].algorithm == "RS256")
    other = next(kid for kid in idp.published if kid != rsa_kid)
    return idp.token(kid=rsa_kid, headers={"kid": other}, tenant=ATTACKED_TENANT)


def _kid_of_another_rsa_key(idp: IdentityProvider) -> str:
    signer = next(kid for kid in idp.published if idp.keys[kid].algorithm == "RS256")
    named = idp.add_key("RS256")  # published, same type: only the signature check can tell
    return idp.token(kid=signer, headers={"kid": named.kid}, tenant=ATTACKED_TENANT)


def _no_kid(idp: IdentityProvider) -> str:
    return idp.token(headers={"kid": None}, tenant=ATTACKED_TENANT)


def _unknown_key(idp: IdentityProvider) -> str:
    stranger = idp.add_key("RS256", publish=False)
    return idp.token(kid=stranger.kid, tenant=ATTACKED_TENANT)


def _claims_attack(**claims: Any) -> Callable[[IdentityProvider], str]:
    def make(idp: IdentityProvider) -> str:
        now = int(time.time())
        resolved = {name: value(now) if callable(value) else value for name, value in claims.items()}
        return idp.token(**{"tenant": ATTACKED_TENANT, **resolved})

    return make


ATTACKS: dict[str, Callable[[IdentityProvider], str]] = {
    "alg-none": _alg_none,
    "hs256-signed-with-the-public-key": _hs256_with_public_key,
    "wrong-kid": _wrong_kid,
    "kid-of-another-rsa-key": _kid_of_another_rsa_key,
    "no-kid": _no_kid,
    "expired": _claims_attack(iat=lambda now: now - 700, exp=lambda now: now - 100),
    "before-nbf": _claims_attack(nbf=lambda now: now + 600),
    "lifetime-over-the-cap": _claims_attack(exp=lambda now: now + 2 * 86_400),
    "no-iat": _claims_attack(iat=None),
    "no-iss": _claims_attack(iss=None),
    "wrong-iss": _claims_attack(iss="https://evil.example"),
    "no-aud": _claims_attack(aud=None),
    "wrong-aud": _claims_attack(aud="another-app"),
    "no-tenant-claim": _claims_attack(tenant=None),
    "tenant-with-bad-characters": _claims_attack(tenant="../mallory corp"),
    "valid-signature-unknown-key": _unknown_key,
}


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
async def test_an_attack_token_is_refused_and_writes_nothing(
    http: aiohttp.ClientSession,
    identity: IdentityStack,
    agent: chat_pb2_grpc.ChatServiceAsyncStub,
    attack: str,
) -> None:
    token = ATTACKS[attack](identity.idp)
    stack = identity.stack
    body = await call(
        http,
        stack.edge_url,
        request("threads.create", input=user_input("let me in")),
        identity.headers(token),
        401,
    )
    assert body["error"]["code"] == "UNAUTHENTICATED", body
    with pytest.raises(aio.AioRpcError) as refused:
        async for _ in agent.CreateThread(
            chat_pb2.CreateThreadRequest(input=_input("let me in")), metadata=_bearer(token), timeout=10
        ):
            pass
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
    print(f"{attack}: edge 401, gRPC {refused.value.code().name}: {refused.value.details()}")
    honest = identity.idp.token(tenant=ATTACKED_TENANT)
    assert await _threads(http, identity, honest) == []
    listed = await agent.ListThreads(
        chat_pb2.ListThreadsRequest(limit=5), metadata=_bearer(honest), timeout=10
    )
    assert list(listed.data) == []


# --------------------------------------------------------------------------- mTLS


async def test_a_client_without_a_certificate_is_refused(identity: IdentityStack) -> None:
    token = identity.idp.token()
    for settings in (identity.client_settings(certificate=False), None):  # TLS without a cert; plaintext
        async with client_channel(identity.stack.agent_address, settings) as channel:
            with pytest.raises(aio.AioRpcError) as refused:
                await chat_pb2_grpc.ChatServiceStub(channel).ListThreads(
                    chat_pb2.ListThreadsRequest(limit=1), metadata=_bearer(token), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    async with client_channel(
        identity.stack.upload_address, identity.client_settings(certificate=False)
    ) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_with_a_certificate_health_answers_and_reflection_is_off(identity: IdentityStack) -> None:
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    for address in (identity.stack.agent_address, identity.stack.upload_address):
        async with client_channel(address, identity.client_settings()) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
            # No request sent: the server ends the call at once, and a send would race that end.
            call = reflect.ServerReflectionInfo(timeout=5)
            assert await call.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_stack_holds_no_shared_secret(identity: IdentityStack) -> None:
    assert not (identity.stack.data_dir / "jwt-secret").exists()
    assert identity.stack.env["SWITCHBOARD_JWT_SECRET"] == ""
    for name in ("edge", "agent", "upload"):
        assert "shared HS256 secret" not in identity.stack.services[name].log_text()
