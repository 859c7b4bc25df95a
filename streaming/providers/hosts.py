"""Upstream addresses a provider may not point at without saying so.

Link-local and cloud-metadata endpoints hand out the machine's credentials
to whoever asks from inside it: a provider base URL there would let anyone
who can edit providers (or import a config file) read them through the
gateway. Such a provider must be marked as an internal endpoint.
"""

from __future__ import annotations

import ipaddress
import socket

METADATA_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # IPv4 link-local: AWS, Azure, GCP, OCI, DigitalOcean metadata
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
    )
)
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0
    except ValueError:
        try:  # the forms a resolver also takes: 2852039166, 0xa9fea9fe, 169.254.43518
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def metadata_host(host: str) -> bool:
    """Whether ``host`` (a URL's host name or address) is link-local or cloud metadata."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in METADATA_NAMES:
        return True
    address = _address(name)
    return address is not None and any(address in net for net in METADATA_NETWORKS)
