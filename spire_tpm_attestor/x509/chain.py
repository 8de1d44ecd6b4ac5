"""Certificate chain verification by signature, for EK and DevID certificates.

Parents are found by checking signatures over the original TBS bytes, never by
comparing encoded issuer names (equal names are encoded differently in practice).
Signature outcomes are cached, keyed by the SHA-256 of both certificates' whole DER.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from spire_tpm_attestor.errors import MalformedInput, NotProven
from spire_tpm_attestor.x509.certificate import Certificate

MAX_CHAIN_DEPTH = 8  # certificates from leaf to anchor inclusive
_CHAIN_HASHES = (hashes.SHA1, hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)


class _SignatureResults:
    """The outcome of recent signature checks, keyed by both certificates' DER digests.

    Chains share their upper links (intermediate by root, the root by itself) and nodes
    re-attest with the same EK certificate, so most checks repeat; the key covers every
    signed byte, so a certificate that differs in any byte is checked afresh. Digests,
    not the DER itself: a full cache of 1.2 KiB EK certificates would otherwise hold
    ~6 MiB of certificate bytes.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._results: OrderedDict[tuple[bytes, bytes], bool] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[bytes, bytes]) -> bool | None:
        with self._lock:
            result = self._results.get(key)
            if result is not None:
                self._results.move_to_end(key)
            return result

    def put(self, key: tuple[bytes, bytes], result: bool) -> None:
        with self._lock:
            self._results[key] = result
            if len(self._results) > self._size:
                self._results.popitem(last=False)


_signature_results = _SignatureResults(size=4096)


def _signed_by(child: Certificate, parent: Certificate) -> bool:
    """Whether `parent`'s key made `child`'s signature over its original TBS bytes."""
    key = (child.der_digest, parent.der_digest)
    result = _signature_results.get(key)
    if result is None:
        result = _verify_signature(child, parent)
        _signature_results.put(key, result)
    return result


def _verify_signature(child: Certificate, parent: Certificate) -> bool:
    try:
        params = child.certificate.signature_algorithm_parameters
        algorithm = child.certificate.signature_hash_algorithm
        key = parent.public_key()
    except (UnsupportedAlgorithm, ValueError, MalformedInput):
        return False  # a signature that cannot be checked does not make a parent
    try:
        if isinstance(key, RSAPublicKey):
            if not isinstance(params, padding.PKCS1v15 | padding.PSS) or not isinstance(
                algorithm, _CHAIN_HASHES
            ):
                return False
            key.verify(child.signature, child.tbs_bytes, params, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA) or not isinstance(algorithm, _CHAIN_HASHES):
                return False
            key.verify(child.signature, child.tbs_bytes, params)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(child.signature, child.tbs_bytes)
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


class Expired(NotProven):
    """A certificate of the chain is past its notAfter."""


def check_validity(cert: Certificate, now: datetime, *, enforce_expiry: bool = True) -> None:
    """Prove `now` lies within the certificate's validity period (or only after its
    notBefore, without `enforce_expiry`: TPM manufacturers certify EKs for the life of
    the part, and many of those certificates have passed their notAfter)."""
    if now < cert.not_valid_before:
        raise NotProven(f"certificate {cert.describe()} is not yet valid")
    if enforce_expiry and now > cert.not_valid_after:
        raise Expired(f"certificate {cert.describe()} has expired")


def check_understood(cert: Certificate) -> None:
    """Prove the certificate has no critical extension this verifier does not apply."""
    unknown = cert.unknown_critical_extensions
    if unknown:
        raise NotProven(
            f"certificate {cert.describe()} has an unknown critical extension {unknown[0]}"
        )


def signing_problem(cert: Certificate) -> str | None:
    """Why `cert` cannot issue certificates at all, or None: whatever the chain."""
    if not cert.is_ca:
        return f"{cert.describe()} is not a CA"
    usage = cert.key_usage
    if usage is not None and not usage.key_cert_sign:
        return f"{cert.describe()} may not sign certificates"
    unknown = cert.unknown_critical_extensions
    if unknown:
        return f"{cert.describe()} has an unknown critical extension {unknown[0]}"
    return None


def _issuer_problem(
    parent: Certificate, cas_below: int, now: datetime, enforce_expiry: bool
) -> NotProven | None:
    """Why `parent`, which signed the certificate below it, cannot act as its issuer."""
    problem = signing_problem(parent)
    if problem is not None:
        return NotProven(f"issuer {problem}")
    constraints = parent.basic_constraints  # present: signing_problem found a CA
    path_length = constraints.path_length if constraints is not None else None
    if path_length is not None and cas_below > path_length:
        return NotProven(f"issuer {parent.describe()} exceeds its path length")
    try:
        check_validity(parent, now, enforce_expiry=enforce_expiry)
    except NotProven as exc:
        return exc
    return None


def _named_issuers(child: Certificate, pool: Sequence[Certificate]) -> list[Certificate]:
    # Names compare as values (x509.Name equality), however either side encoded them.
    issuer = child.issuer_key
    return [cert for cert in pool if cert.subject_key == issuer]


def _every_candidate(child: Certificate, pool: Sequence[Certificate]) -> list[Certificate]:
    # Certificates whose subject is the child's issuer first; the signature decides.
    issuer = child.issuer_key
    return sorted(pool, key=lambda cert: cert.subject_key != issuer)


def _self_signed(cert: Certificate) -> bool:
    return cert.subject_key == cert.issuer_key and _signed_by(cert, cert)


@dataclass
class _Search:
    """One breadth-first search for a chain from `leaf` to `trusted`: `root` is the first
    chain found to a self-signed trusted certificate, `nearest` the first to any trusted
    one, `problems` why signing certificates were passed over."""

    root: list[Certificate] | None = None
    nearest: list[Certificate] | None = None
    problems: list[NotProven] = field(default_factory=list)


def _search(
    leaf: Certificate,
    pool: Sequence[Certificate],
    trusted: set[bytes],
    now: datetime,
    enforce_expiry: bool,
    candidates: Callable[[Certificate, Sequence[Certificate]], list[Certificate]],
) -> _Search:
    found = _Search()
    queue: deque[list[Certificate]] = deque([[leaf]])
    expanded = {leaf.der}
    # Breadth first with each certificate expanded once: the shortest chain wins, and
    # cross-signed certificates cannot make the search explode.
    while queue:
        path = queue.popleft()
        for parent in candidates(path[-1], pool):
            if parent.der in expanded or not _signed_by(path[-1], parent):
                continue
            problem = _issuer_problem(parent, len(path) - 1, now, enforce_expiry)
            if problem is not None:
                found.problems.append(problem)
                continue
            chain = [*path, parent]
            if parent.der in trusted:
                if _self_signed(parent):
                    found.root = chain
                    return found
                found.nearest = found.nearest or chain
            if len(chain) < MAX_CHAIN_DEPTH:
                expanded.add(parent.der)
                queue.append(chain)
    return found


def verify_chain(
    leaf: Certificate,
    intermediates: Sequence[Certificate],
    bundle: Sequence[Certificate],
    now: datetime,
    *,
    enforce_expiry: bool = True,
) -> list[Certificate]:
    """Verify `leaf` chains to a certificate of `bundle`, possibly through intermediates.

    Parents are found by signature, never by encoded issuer name (equal names are
    encoded differently in practice). The certificates whose subject equals the child's
    issuer (as names compare, whatever their encoding) are searched first; when they
    lead to no self-signed root, every candidate is, each by its signature. Every parent
    must be a CA allowed to sign certificates, every certificate valid at `now`
    (timezone-aware; past its notAfter too without `enforce_expiry`), none with a
    critical extension this verifier does not apply, and the chain at most
    MAX_CHAIN_DEPTH long. A failure is `Expired` when expiry alone stood in the way.
    Returns [leaf, intermediates..., anchor], the shortest such chain of the search that
    found it. The anchor is a self-signed root of `bundle` whenever one is reachable, so
    it does not depend on whether an intermediate was configured in the bundle or sent
    by the agent; otherwise it is the nearest bundle certificate.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    check_validity(leaf, now, enforce_expiry=enforce_expiry)
    check_understood(leaf)
    trusted = {cert.der for cert in bundle}
    pool = list({cert.der: cert for cert in [*bundle, *intermediates]}.values())
    # By name first: a new leaf's signature is then checked against its issuer only, not
    # against every other CA of the bundle too.
    found = _search(leaf, pool, trusted, now, enforce_expiry, _named_issuers)
    if found.root is None:
        found = _search(leaf, pool, trusted, now, enforce_expiry, _every_candidate)
    chain = found.root or found.nearest
    if chain is not None:
        return chain
    problems = found.problems
    failure = problems[0] if problems else NotProven("no trusted issuer signed it")
    raise type(failure)(f"certificate {leaf.describe()} does not chain to a trusted CA: {failure}")
