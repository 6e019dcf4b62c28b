"""The keywords OpenSSH's client config knows (readconf.c, OpenSSH 9.x, deprecated ones included).

Why a list: ``ssh`` refuses a config with a keyword it does not know ("Bad configuration option"),
so a typo such as ``HostNmae`` never silently reaches a host; the import must not be laxer than
ssh and put a host at the wrong address.
"""

from __future__ import annotations

import difflib

OPENSSH_KEYWORDS = frozenset(k.lower() for k in """
Host Match Include IgnoreUnknown
AddKeysToAgent AddressFamily BatchMode BindAddress BindInterface CanonicalDomains
CanonicalizeFallbackLocal CanonicalizeHostname CanonicalizeMaxDots CanonicalizePermittedCNAMEs
CASignatureAlgorithms CertificateFile ChannelTimeout ChallengeResponseAuthentication CheckHostIP
Cipher Ciphers ClearAllForwardings Compression CompressionLevel ConnectionAttempts ConnectTimeout
ControlMaster ControlPath ControlPersist DSAAuthentication DynamicForward EnableEscapeCommandline
EnableSSHKeysign EscapeChar ExitOnForwardFailure FingerprintHash ForkAfterAuthentication
ForwardAgent ForwardX11 ForwardX11Timeout ForwardX11Trusted GatewayPorts GlobalKnownHostsFile
GSSAPIAuthentication GSSAPIClientIdentity GSSAPIDelegateCredentials GSSAPIKeyExchange
GSSAPIRenewalForcesRekey GSSAPIServerIdentity GSSAPITrustDns HashKnownHosts
HostbasedAcceptedAlgorithms HostbasedAuthentication HostbasedKeyTypes HostKeyAlgorithms
HostKeyAlias HostName IdentitiesOnly IdentityAgent IdentityFile IPQoS KbdInteractiveAuthentication
KbdInteractiveDevices KeepAlive KexAlgorithms KnownHostsCommand LocalCommand LocalForward LogLevel
LogVerbose MACs NoHostAuthenticationForLocalhost NumberOfPasswordPrompts ObscureKeystrokeTiming
PasswordAuthentication PermitLocalCommand PermitRemoteOpen PKCS11Provider Port
PreferredAuthentications Protocol ProxyCommand ProxyJump ProxyUseFdpass PubkeyAcceptedAlgorithms
PubkeyAcceptedKeyTypes PubkeyAuthentication RefuseConnection RekeyLimit RemoteCommand RemoteForward
RequestTTY RequiredRSASize RevokedHostKeys RhostsRSAAuthentication RSAAuthentication SecurityKeyProvider
SendEnv ServerAliveCountMax ServerAliveInterval SessionType SetEnv SmartcardDevice
StdinNull StreamLocalBindMask StreamLocalBindUnlink StrictHostKeyChecking SyslogFacility
TCPKeepAlive Tag Tunnel TunnelDevice UpdateHostKeys UseBlacklistedKeys UseKeychain UsePrivilegedPort
UseRoaming User UserKnownHostsFile VerifyHostKeyDNS VersionAddendum VisualHostKey XAuthLocation
FallBackToRsh UseRsh PubkeyAuthOptions WarnWeakCrypto
""".split())

_CANONICAL = {k.lower(): k for k in """
HostName Port User IdentityFile ProxyJump ProxyCommand Host Match Include HostKeyAlias
IdentitiesOnly ForwardAgent ServerAliveInterval ConnectTimeout StrictHostKeyChecking
UserKnownHostsFile LocalForward RemoteForward
""".split()}


def suggestion(keyword: str) -> str:
    """'did you mean HostName?' for a near miss of a keyword, else a pointer to the manual."""
    close = difflib.get_close_matches(keyword.lower(), sorted(OPENSSH_KEYWORDS), n=1, cutoff=0.6)
    if close:
        return f"did you mean {_CANONICAL.get(close[0], close[0])}?"
    return "see ssh_config(5), or list it in IgnoreUnknown"
