"""Provider base URLs on link-local or cloud-metadata addresses, and the rules
the admin form and `sluice_config import` share (Provider.clean)."""

from __future__ import annotations

import pytest

from streaming.config_io import ConfigError, config_import
from streaming.models import Provider
from streaming.providers.hosts import metadata_host
from tests.conftest import unique

METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/",
    "http://[fe80::1]:8080/v1",
    "http://100.100.100.200/latest/",
    "http://metadata.google.internal/computeMetadata/v1",
    "http://METADATA.GOOGLE.INTERNAL./v1",
    "http://2852039166/v1",  # 169.254.169.254 as one number
    "http://[::ffff:169.254.169.254]/v1",
]


@pytest.mark.parametrize(
    "host", ["169.254.1.1", "fe80::1%eth0", "0xa9fea9fe", "metadata", "instance-data"]
)
def test_metadata_hosts_are_recognised(host):
    assert metadata_host(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "api.openai.com", "10.0.0.5", "::1", "fd00::1"])
def test_ordinary_hosts_are_not(host):
    assert not metadata_host(host)


def add_provider(admin_client, **fields):
    data = {"name": unique("p"), "kind": "openai", "api_key_env": "", "enabled": "on", **fields}
    return admin_client.post("/admin/streaming/provider/add/", data)


@pytest.mark.django_db
@pytest.mark.parametrize("url", METADATA_URLS)
def test_the_admin_refuses_a_metadata_base_url(admin_client, url):
    response = add_provider(admin_client, base_url=url)
    assert response.status_code == 200  # the form again, with its error
    assert "cloud-metadata address" in response.content.decode()
    assert not Provider.objects.exists()


@pytest.mark.django_db
def test_the_admin_allows_it_for_an_internal_endpoint(admin_client):
    url = "http://169.254.169.254/v1"
    response = add_provider(admin_client, base_url=url, internal_endpoint="on")
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Provider.objects.get().internal_endpoint


@pytest.mark.django_db
def test_the_admin_still_needs_a_base_url_for_openai(admin_client):
    response = add_provider(admin_client, base_url="")
    assert "needs a base URL" in response.content.decode()


def provider_doc(**fields):
    return {"providers": [{"name": unique("p"), "kind": "openai", **fields}]}


@pytest.mark.django_db
@pytest.mark.parametrize("url", METADATA_URLS)
def test_the_import_refuses_a_metadata_base_url(url):
    with pytest.raises(ConfigError, match="cloud-metadata address"):
        config_import(provider_doc(base_url=url))
    assert not Provider.objects.exists()


@pytest.mark.django_db
def test_the_import_allows_it_for_an_internal_endpoint():
    config_import(provider_doc(base_url="http://169.254.169.254/v1", internal_endpoint=True))
    assert Provider.objects.get().internal_endpoint


@pytest.mark.django_db
def test_the_import_needs_a_base_url_for_openai_like_the_admin():
    with pytest.raises(ConfigError, match="needs a base URL"):
        config_import(provider_doc())
    assert not Provider.objects.exists()
