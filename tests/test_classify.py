import copy
import re

import pytest

from remediation.classify import (
    ANY,
    LINUX_MATRIX,
    MDE_PUBLISHER,
    OsFamily,
    Protection,
    Support,
    classify,
)
from remediation.facts import facts_from_arm, facts_from_graph
from remediation.model import ExtensionFacts, Power, VmFacts, VmRef

SUB = "11111111-1111-1111-1111-111111111111"
TAG = "defender-remediation-exclude"
W, L, U = OsFamily.WINDOWS, OsFamily.LINUX, OsFamily.UNKNOWN
OK, UNI, NO, UNK = Support.SUPPORTED, Support.UNIFIED, Support.UNSUPPORTED, Support.UNKNOWN


def facts(image=("", "", ""), os_type="", group="rg", **more):
    publisher, offer, sku = image
    return VmFacts(
        vm=VmRef(SUB, group, "vm1"),
        os_type=os_type,
        publisher=publisher,
        offer=offer,
        sku=sku,
        power=more.pop("power", Power.RUNNING),
        **more,
    )


def win(offer, sku, publisher="MicrosoftWindowsServer", **more):
    return facts((publisher, offer, sku), "Windows", **more)


def lin(publisher, offer, sku, **more):
    return facts((publisher, offer, sku), "Linux", **more)


def agent(os_type, os_name, os_version, **more):
    gallery = (
        f"/subscriptions/{SUB}/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/i"
    )
    return facts(os_type=os_type, os_name=os_name, os_version=os_version, image_id=gallery, **more)


# (case, facts, os family, platform, support, Defender Antivirus built in)
# fmt: off
MATRIX = [
    # Windows Server marketplace
    ("ws2025 azure edition", win("WindowsServer", "2025-datacenter-azure-edition"), W, "windows-server-2025", OK, True),
    ("ws2022 datacenter", win("WindowsServer", "2022-datacenter"), W, "windows-server-2022", OK, True),
    ("ws2022 gen2", win("WindowsServer", "2022-datacenter-g2"), W, "windows-server-2022", OK, True),
    ("ws2022 azure edition hotpatch", win("WindowsServer", "2022-datacenter-azure-edition-hotpatch"), W, "windows-server-2022", OK, True),
    ("ws2022 core smalldisk", win("WindowsServer", "2022-datacenter-core-smalldisk-g2"), W, "windows-server-2022", OK, True),
    ("ws2019 datacenter", win("WindowsServer", "2019-Datacenter"), W, "windows-server-2019", OK, True),
    ("ws2019 gensecond", win("WindowsServer", "2019-datacenter-gensecond"), W, "windows-server-2019", OK, True),
    ("ws2019 smalldisk bracket", win("WindowsServer", "[smalldisk] 2019-Datacenter"), W, "windows-server-2019", OK, True),
    ("ws2016 datacenter", win("WindowsServer", "2016-Datacenter"), W, "windows-server-2016", UNI, True),
    ("ws2016 server core", win("WindowsServer", "2016-datacenter-server-core-g2"), W, "windows-server-2016", UNI, True),
    ("ws2012 r2", win("WindowsServer", "2012-R2-Datacenter"), W, "windows-server-2012-r2", UNI, False),
    ("ws2012 r2 gen2", win("WindowsServer", "2012-r2-datacenter-gensecond"), W, "windows-server-2012-r2", UNI, False),
    ("ws2012", win("WindowsServer", "2012-Datacenter"), W, "windows-server-2012", NO, False),
    ("ws2008 r2", win("WindowsServer", "2008-R2-SP1"), W, "windows-server-2008-r2", NO, False),
    ("sql on ws2022", win("sql2019-ws2022", "enterprise", publisher="MicrosoftSQLServer"), W, "windows-server-2022", OK, True),
    ("sql on ws2019", win("sql2019-ws2019", "sqldev-gen2", publisher="MicrosoftSQLServer"), W, "windows-server-2019", OK, True),
    ("sql on ws2016", win("SQL2017-WS2016", "Standard", publisher="MicrosoftSQLServer"), W, "windows-server-2016", UNI, True),
    ("sql on ws2012r2", win("sql2014sp3-ws2012r2", "enterprise", publisher="MicrosoftSQLServer"), W, "windows-server-2012-r2", UNI, False),
    ("server with AHB licence", win("WindowsServer", "2022-datacenter", license_type="Windows_Server"), W, "windows-server-2022", OK, True),
    # Windows client
    ("win11 avd", win("windows-11", "win11-23h2-avd", publisher="MicrosoftWindowsDesktop"), W, "windows-client-multisession", OK, True),
    ("win11 avd m365", win("office-365", "win11-23h2-avd-m365", publisher="MicrosoftWindowsDesktop"), W, "windows-client-multisession", OK, True),
    ("win10 avd", win("windows-10", "win10-22h2-avd", publisher="MicrosoftWindowsDesktop"), W, "windows-client-multisession", OK, True),
    ("win10 evd", win("Windows-10", "21h1-evd", publisher="MicrosoftWindowsDesktop"), W, "windows-client-multisession", OK, True),
    ("win10 rs5 evd", win("Windows-10", "rs5-evd", publisher="MicrosoftWindowsDesktop"), W, "windows-client-multisession", OK, True),
    ("win11 pro", win("windows-11", "win11-22h2-pro", publisher="MicrosoftWindowsDesktop"), W, "windows-client", NO, True),
    ("win11 ent", win("windows-11", "win11-23h2-ent", publisher="MicrosoftWindowsDesktop"), W, "windows-client", NO, True),
    ("win10 ent", win("windows-10", "win10-22h2-ent-g2", publisher="MicrosoftWindowsDesktop"), W, "windows-client", NO, True),
    ("win10 pro", win("Windows-10", "20h2-pro-g2", publisher="MicrosoftWindowsDesktop"), W, "windows-client", NO, True),
    ("win7", win("windows-7", "win7-enterprise", publisher="MicrosoftWindowsDesktop"), W, "windows-client", NO, False),
    ("client licence on custom image", agent("Windows", "", "", license_type="Windows_Client"), W, "windows-client", NO, True),
    ("client licence multi-session agent", agent("Windows", "Windows 10 Enterprise multi-session", "10.0.19045", license_type="Windows_Client"), W, "windows-client-multisession", OK, True),
    # Windows gallery/custom images: the guest agent's report
    ("agent ws2022", agent("Windows", "Windows Server 2022 Datacenter", "10.0.20348.2113"), W, "windows-server-2022", OK, True),
    ("agent ws2022 azure edition", agent("Windows", "Windows Server 2022 Datacenter: Azure Edition", "10.0.20348"), W, "windows-server-2022", OK, True),
    ("agent ws2019", agent("Windows", "Windows Server 2019 Datacenter", "10.0.17763.5329"), W, "windows-server-2019", OK, True),
    ("agent ws2016", agent("Windows", "Windows Server 2016 Standard", "10.0.14393.6452"), W, "windows-server-2016", UNI, True),
    ("agent ws2012r2", agent("Windows", "Windows Server 2012 R2 Datacenter", "6.3.9600.21620"), W, "windows-server-2012-r2", UNI, False),
    ("agent ws2008r2", agent("Windows", "Windows Server 2008 R2 Datacenter", "6.1.7601"), W, "windows-server-2008-r2", NO, False),
    ("agent ws2025", agent("Windows", "Windows Server 2025 Datacenter", "10.0.26100.1"), W, "windows-server-2025", OK, True),
    ("agent build only 2019", agent("Windows", "", "10.0.17763.1"), W, "windows-server-2019", OK, True),
    ("agent build only 2012r2", agent("Windows", "", "6.3.9600"), W, "windows-server-2012-r2", UNI, False),
    ("agent win11 single session", agent("Windows", "Windows 11 Enterprise", "10.0.22631"), W, "windows-client", NO, True),
    ("agent win10 multi-session", agent("Windows", "Windows 10 Enterprise multi-session", "10.0.19045"), W, "windows-client-multisession", OK, True),
    ("agent ws2019 without a build", agent("Windows", "Windows Server 2019 Datacenter", ""), W, "windows-server-2019", OK, True),
    ("agent ws2019 without an os type", agent("", "Windows Server 2019 Datacenter", ""), W, "windows-server-2019", OK, True),
    ("agent ws2003 r2", agent("Windows", "Windows Server 2003 R2 Enterprise", "5.2.3790"), W, "windows-unknown", UNK, False),
    ("agent server the matrix does not know, no os type", agent("", "Windows Server 2030 Datacenter", ""), U, "unknown", UNK, False),
    ("agent win7", agent("Windows", "Windows 7 Enterprise", "6.1.7601"), W, "windows-client", NO, False),
    ("win7 named across offer and sku", win("Windows", "7-Enterprise-N", publisher="MicrosoftWindowsDesktop"), W, "windows-client", NO, False),
    ("windows server image the matrix does not know", win("WindowsServer", "2030-datacenter"), W, "windows-unknown", UNK, False),
    ("windows image of a linux vendor", facts(("Oracle", "weblogic-windows", "2019"), "Windows"), W, "windows-unknown", UNK, False),
    ("a build number without an os type", facts(os_version="6.3.9600"), U, "unknown", UNK, False),
    ("windows with nothing else", facts(os_type="Windows"), W, "windows-unknown", UNK, False),
    ("windows unknown build", agent("Windows", "", "10.0.99999"), W, "windows-unknown", UNK, False),
    # Linux marketplace
    ("ubuntu 24.04", lin("Canonical", "ubuntu-24_04-lts", "server"), L, "ubuntu-24.04", OK, False),
    ("ubuntu 22.04 gen2", lin("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"), L, "ubuntu-22.04", OK, False),
    ("ubuntu 20.04", lin("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts"), L, "ubuntu-20.04", OK, False),
    ("ubuntu pro 20.04", lin("Canonical", "0001-com-ubuntu-pro-focal", "pro-20_04-lts"), L, "ubuntu-20.04", OK, False),
    ("ubuntu 18.04", lin("Canonical", "UbuntuServer", "18.04-LTS"), L, "ubuntu-18.04", OK, False),
    ("ubuntu 16.04", lin("Canonical", "UbuntuServer", "16.04-LTS"), L, "ubuntu-16.04", OK, False),
    ("ubuntu 23.10 interim", lin("Canonical", "0001-com-ubuntu-server-mantic", "23_10"), L, "ubuntu-23.10", NO, False),
    ("ubuntu 14.04", lin("Canonical", "UbuntuServer", "14.04.5-LTS"), L, "ubuntu-14.04", NO, False),
    ("ubuntu 22.04 arm64", lin("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-arm64"), L, "ubuntu-22.04-arm64", OK, False),
    ("ubuntu 18.04 arm64", lin("Canonical", "UbuntuServer", "18_04-lts-arm64"), L, "ubuntu-18.04-arm64", NO, False),
    ("ubuntu 20.04 aarch64", lin("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts-aarch64"), L, "ubuntu-20.04-arm64", OK, False),
    ("ubuntu 26.04", lin("Canonical", "ubuntu-26_04-lts", "server"), L, "ubuntu-26.04", OK, False),
    ("ubuntu 20.10 interim", lin("Canonical", "0001-com-ubuntu-server-groovy", "20_10"), L, "ubuntu-20.10", NO, False),
    ("ubuntu image naming no version", lin("Canonical", "0001-com-ubuntu-server-focal", "server"), L, "ubuntu", UNK, False),
    ("ubuntu 22.10 interim", lin("Canonical", "0001-com-ubuntu-server-kinetic", "22_10"), L, "ubuntu-22.10", NO, False),
    ("rhel 9.2", lin("RedHat", "RHEL", "9_2"), L, "rhel-9.2", OK, False),
    ("rhel 8.6 glued", lin("RedHat", "RHEL", "86-gen2"), L, "rhel-8.6", OK, False),
    ("rhel 8.10 glued", lin("RedHat", "RHEL", "810-gen2"), L, "rhel-8.10", OK, False),
    ("rhel 8 lvm", lin("RedHat", "RHEL", "8-lvm-gen2"), L, "rhel-8", OK, False),
    ("rhel 7.9", lin("RedHat", "RHEL", "7.9"), L, "rhel-7.9", OK, False),
    ("rhel 7.2 lowest", lin("RedHat", "RHEL", "7.2"), L, "rhel-7.2", OK, False),
    ("rhel 10 lvm", lin("RedHat", "RHEL", "10-lvm-gen2"), L, "rhel-10", OK, False),
    ("rhel 10.0 underscore", lin("RedHat", "RHEL", "10_0"), L, "rhel-10.0", OK, False),
    ("rhel 10.0 glued", lin("RedHat", "RHEL", "100-gen2"), L, "rhel-10.0", OK, False),
    ("rhel 10 arm64", lin("RedHat", "rhel-arm64", "10_0-arm64"), L, "rhel-10.0-arm64", OK, False),
    ("rhel 7 arm64", lin("RedHat", "rhel-arm64", "7_9-arm64"), L, "rhel-7.9-arm64", NO, False),
    ("rhel raw", lin("RedHat", "RHEL", "rhel-raw76"), L, "rhel-7.6", OK, False),
    ("rhel 11 unknown major", lin("RedHat", "RHEL", "11-lvm"), L, "rhel-11", NO, False),
    ("rhel 14 unknown major", lin("RedHat", "RHEL", "14-lvm"), L, "rhel-14", NO, False),
    ("rhel 15 unknown major", lin("RedHat", "RHEL", "15-lvm"), L, "rhel-15", NO, False),
    ("rhel 16 is past the newer-major window: read glued", lin("RedHat", "RHEL", "16-lvm"), L, "rhel-1.6", NO, False),
    ("rhel 6.5 glued", lin("RedHat", "RHEL", "65"), L, "rhel-6.5", NO, False),
    ("centos 6.9 glued", lin("OpenLogic", "CentOS", "69"), L, "centos-6.9", NO, False),
    ("rhel 7.1", lin("RedHat", "RHEL", "7.1"), L, "rhel-7.1", NO, False),
    ("rhel 6.10", lin("RedHat", "RHEL", "6.10"), L, "rhel-6.10", NO, False),
    ("rhel byos lvm", lin("RedHat", "rhel-byos", "rhel-lvm87"), L, "rhel-8.7", OK, False),
    ("centos 7.9", lin("OpenLogic", "CentOS", "7_9"), L, "centos-7.9", OK, False),
    ("centos 7.5 gen2", lin("OpenLogic", "CentOS", "7_5-gen2"), L, "centos-7.5", OK, False),
    ("centos 7.1", lin("OpenLogic", "CentOS", "7.1"), L, "centos-7.1", NO, False),
    ("centos 8.5", lin("OpenLogic", "CentOS", "8_5"), L, "centos-8.5", OK, False),
    ("centos 6.10", lin("OpenLogic", "CentOS", "6.10"), L, "centos-6.10", NO, False),
    ("centos lvm", lin("OpenLogic", "centos-lvm", "7-lvm"), L, "centos-7", OK, False),
    ("oracle 8.9", lin("Oracle", "Oracle-Linux", "ol89-lvm-gen2"), L, "oracle-8.9", OK, False),
    ("oracle 7.9", lin("Oracle", "Oracle-Linux", "ol79"), L, "oracle-7.9", OK, False),
    ("oracle 9", lin("Oracle", "Oracle-Linux", "ol9-lvm"), L, "oracle-9", OK, False),
    ("oracle 6.10", lin("Oracle", "Oracle-Linux", "6.10"), L, "oracle-6.10", NO, False),
    ("oracle 7.1", lin("Oracle", "Oracle-Linux", "ol71"), L, "oracle-7.1", NO, False),
    ("oracle 10", lin("Oracle", "Oracle-Linux", "ol10-lvm-gen2"), L, "oracle-10", OK, False),
    ("debian 12", lin("Debian", "debian-12", "12-gen2"), L, "debian-12", OK, False),
    ("debian 11", lin("Debian", "debian-11", "11"), L, "debian-11", OK, False),
    ("debian 10", lin("Debian", "debian-10", "10"), L, "debian-10", OK, False),
    ("debian 8", lin("credativ", "Debian", "8"), L, "debian-8", NO, False),
    ("debian 12 arm64", lin("Debian", "debian-12", "12-arm64"), L, "debian-12-arm64", OK, False),
    ("debian 10 arm64", lin("Debian", "debian-10", "10-arm64"), L, "debian-10-arm64", NO, False),
    ("debian 13", lin("Debian", "debian-13", "13-gen2"), L, "debian-13", OK, False),
    ("debian 9", lin("credativ", "Debian", "9"), L, "debian-9", OK, False),
    ("debian 14", lin("Debian", "debian-14", "14"), L, "debian-14", NO, False),
    ("sles 15 sp5", lin("SUSE", "sles-15-sp5", "gen2"), L, "sles-15.5", OK, False),
    ("sles 12 sp5", lin("SUSE", "sles-12-sp5", "gen1"), L, "sles-12.5", OK, False),
    ("sles sap 15", lin("SUSE", "sles-sap-15-sp4", "gen2"), L, "sles-15.4", OK, False),
    ("sles 11", lin("SUSE", "sles-11-sp4", "gen1"), L, "sles-11.4", NO, False),
    ("sles 15 without a service pack", lin("SUSE", "sles-15", "gen2"), L, "sles-15.0", OK, False),
    ("sles 15 sp5 arm64", lin("SUSE", "sles-15-sp5-arm64", "gen2"), L, "sles-15.5-arm64", OK, False),
    ("sles 15 sp4 arm64", lin("SUSE", "sles-15-sp4-arm64", "gen2"), L, "sles-15.4-arm64", NO, False),
    ("sles 12 arm64", lin("SUSE", "sles-12-sp5-arm64", "gen2"), L, "sles-12.5-arm64", NO, False),
    ("sles 16", lin("SUSE", "sles-16-0", "gen2"), L, "sles-16.0", OK, False),
    ("opensuse leap 15.6", lin("SUSE", "opensuse-leap-15-6", "gen2"), L, "opensuse-15.6", OK, False),
    ("opensuse leap 15.5", lin("SUSE", "opensuse-leap-15-5", "gen2"), L, "opensuse-15.5", NO, False),
    ("alma 9 gen2", lin("almalinux", "almalinux-x86_64", "9-gen2"), L, "alma-9", OK, False),
    ("alma 8.7", lin("almalinux", "almalinux", "8_7-gen2"), L, "alma-8.7", OK, False),
    ("alma 8.3", lin("almalinux", "almalinux", "8_3"), L, "alma-8.3", NO, False),
    ("alma 8.4 lowest", lin("almalinux", "almalinux", "8_4"), L, "alma-8.4", OK, False),
    ("alma 9.1", lin("almalinux", "almalinux-x86_64", "9_1"), L, "alma-9.1", NO, False),
    ("alma 10 arm64", lin("almalinux", "almalinux-arm", "10-arm64"), L, "alma-10-arm64", OK, False),
    ("rocky 9 base", lin("resf", "rockylinux-x86_64", "9-base"), L, "rocky-9", OK, False),
    ("rocky 8.6", lin("resf", "rockylinux-x86_64", "8_6"), L, "rocky-8.6", NO, False),
    ("rocky 8.7 lowest", lin("resf", "rockylinux-x86_64", "8_7"), L, "rocky-8.7", OK, False),
    ("rocky 9.1", lin("resf", "rockylinux-x86_64", "9_1"), L, "rocky-9.1", NO, False),
    ("rocky 10", lin("resf", "rockylinux-x86_64", "10-base"), L, "rocky-10", OK, False),
    ("rocky 9.2", lin("erockyenterprisesoftwarefoundationinc1653071250513", "rockylinux-9", "rockylinux-9-2"), L, "rocky-9.2", OK, False),
    ("mariner 2", lin("MicrosoftCBLMariner", "cbl-mariner", "cbl-mariner-2-gen2"), L, "mariner-2", OK, False),
    ("mariner 2 named in the offer", lin("MicrosoftCBLMariner", "cbl-mariner-2", "gen2-fips"), L, "mariner-2", OK, False),
    ("mariner naming no version", lin("MicrosoftCBLMariner", "cbl-mariner", "gen2"), L, "mariner", UNK, False),
    ("mariner 1", lin("MicrosoftCBLMariner", "cbl-mariner", "1-gen2"), L, "mariner-1", NO, False),
    ("azure linux 3", lin("MicrosoftCBLMariner", "azure-linux-3", "azure-linux-3-gen2"), L, "mariner-3", NO, False),
    ("a generation marker parts digits", lin("RedHat", "RHEL", "8gen27"), L, "rhel-8", OK, False),
    ("debian 9 point release", lin("credativ", "Debian", "9.13"), L, "debian-9.13", OK, False),
    ("flatcar", lin("kinvolk", "flatcar-container-linux-free", "stable-gen2"), L, "flatcar", NO, False),
    # Linux gallery/custom images: the guest agent's report
    ("agent ubuntu 22.04", agent("Linux", "ubuntu", "22.04"), L, "ubuntu-22.04", OK, False),
    ("agent rhel 8.6", agent("Linux", "redhat", "8.6"), L, "rhel-8.6", OK, False),
    ("agent rhel 9.4", agent("Linux", "rhel", "9.4"), L, "rhel-9.4", OK, False),
    ("agent centos 7.9.2009", agent("Linux", "centos", "7.9.2009"), L, "centos-7.9", OK, False),
    ("agent debian 11", agent("Linux", "debian", "11"), L, "debian-11", OK, False),
    ("agent sles 15.4", agent("Linux", "sles", "15.4"), L, "sles-15.4", OK, False),
    ("agent oracle 8.6", agent("Linux", "oracle", "8.6"), L, "oracle-8.6", OK, False),
    ("agent alma 9.2", agent("Linux", "almalinux", "9.2"), L, "alma-9.2", OK, False),
    ("agent rocky 8.7", agent("Linux", "rocky", "8.7"), L, "rocky-8.7", OK, False),
    ("agent amazon linux 2", agent("Linux", "amzn", "2"), L, "amazon-linux-2", OK, False),
    ("agent amazon linux 2023", agent("Linux", "amzn", "2023"), L, "amazon-linux-2023", OK, False),
    ("agent fedora 38", agent("Linux", "fedora", "38"), L, "fedora-38", OK, False),
    ("agent fedora 39", agent("Linux", "fedora", "39"), L, "fedora-39", OK, False),
    ("agent fedora 33 lowest", agent("Linux", "fedora", "33"), L, "fedora-33", OK, False),
    ("agent fedora 44 highest", agent("Linux", "fedora", "44"), L, "fedora-44", OK, False),
    ("agent fedora 45", agent("Linux", "fedora", "45"), L, "fedora-45", NO, False),
    ("agent centos stream 9", agent("Linux", "centos", "9"), L, "centos-9", OK, False),
    ("agent centos stream named", agent("Linux", "CentOS Stream", "10"), L, "centos-stream-10", OK, False),
    ("agent debian 13", agent("Linux", "debian", "13"), L, "debian-13", OK, False),
    ("agent rhel 10.1", agent("Linux", "rhel", "10.1"), L, "rhel-10.1", OK, False),
    ("agent ubuntu 20.10", agent("Linux", "ubuntu", "20.10"), L, "ubuntu-20.10", NO, False),
    ("agent fedora 32", agent("Linux", "fedora", "32"), L, "fedora-32", NO, False),
    ("agent mariner 2.0", agent("Linux", "CBL-Mariner", "2.0"), L, "mariner-2.0", OK, False),
    ("agent opensuse 15.5", agent("Linux", "opensuse-leap", "15.5"), L, "opensuse-15.5", NO, False),
    ("agent opensuse 15.6", agent("Linux", "opensuse-leap", "15.6"), L, "opensuse-15.6", OK, False),
    ("agent amazon linux 1", agent("Linux", "amzn", "2018.03"), L, "amazon-linux-2018.3", NO, False),
    ("agent gentoo", agent("Linux", "gentoo", "2.14"), L, "gentoo-2.14", NO, False),
    ("agent distro name slugified", agent("Linux", "Gentoo Linux!", "2.14"), L, "gentoo-linux-2.14", NO, False),
    ("agent distro name of symbols only", agent("Linux", "???", "1.0"), L, "linux-unknown", UNK, False),
    ("agent distro without version", agent("Linux", "ubuntu", ""), L, "ubuntu", UNK, False),
    ("linux with nothing else", facts(os_type="Linux"), L, "linux-unknown", UNK, False),
    ("agent without os type", agent("", "ubuntu", "20.04"), L, "ubuntu-20.04", OK, False),
    # Nothing at all
    ("nothing known", facts(), U, "unknown", UNK, False),
]
# fmt: on


@pytest.mark.parametrize(
    ("facts_", "family", "platform", "support", "builtin_av"),
    [row[1:] for row in MATRIX],
    ids=[row[0] for row in MATRIX],
)
def test_the_os_matrix(facts_, family, platform, support, builtin_av):
    result = classify(facts_, TAG)
    assert (result.os, result.platform, result.support, result.builtin_av) == (
        family,
        platform,
        support,
        builtin_av,
    )


# (the build number a Windows guest agent reports with no OS name, the platform, support)
# fmt: off
WINDOWS_BUILDS = [
    ("10.0.14393", "windows-server-2016", UNI),
    ("10.0.14393.6452", "windows-server-2016", UNI),
    ("10.0.17763", "windows-server-2019", OK),
    ("10.0.20348", "windows-server-2022", OK),
    ("10.0.26100", "windows-server-2025", OK),
    ("6.3", "windows-server-2012-r2", UNI),
    ("6.3.9600", "windows-server-2012-r2", UNI),
    ("6.2", "windows-server-2012", NO),
    ("6.2.9200", "windows-server-2012", NO),
    ("6.1", "windows-server-2008-r2", NO),
    ("6.1.7601", "windows-server-2008-r2", NO),
    ("10.0.143930", "windows-unknown", UNK),
    ("10.0", "windows-unknown", UNK),
    ("6.31", "windows-unknown", UNK),
]
# fmt: on


@pytest.mark.parametrize(("build", "platform", "support"), WINDOWS_BUILDS)
def test_a_windows_build_number_alone_names_the_server_version(build, platform, support):
    result = classify(agent("Windows", "", build), TAG)
    assert (result.os, result.platform, result.support) == (W, platform, support)


def a(distro, version):
    """What a Linux guest agent reports (x64: only images name arm64)."""
    return agent("Linux", distro, version)


# Each row of LINUX_MATRIX at its bounds: the lowest minor and the one below, the highest
# and the one above where there is one, and the architectures it lists and does not.
# (case, facts, platform, support)
# fmt: off
LINUX_BOUNDS = [
    ("rhel 7.2", a("rhel", "7.2"), "rhel-7.2", OK),
    ("rhel 7.1", a("rhel", "7.1"), "rhel-7.1", NO),
    ("rhel 7 arm64", lin("RedHat", "rhel-arm64", "7_9-arm64"), "rhel-7.9-arm64", NO),
    ("rhel 8.0", a("rhel", "8.0"), "rhel-8.0", OK),
    ("rhel 8 arm64", lin("RedHat", "rhel-arm64", "8_8-arm64"), "rhel-8.8-arm64", OK),
    ("rhel 9.0", a("rhel", "9.0"), "rhel-9.0", OK),
    ("rhel 9 arm64", lin("RedHat", "rhel-arm64", "9_4-arm64"), "rhel-9.4-arm64", OK),
    ("rhel 10.0", a("rhel", "10.0"), "rhel-10.0", OK),
    ("rhel 10 arm64", lin("RedHat", "rhel-arm64", "10_0-arm64"), "rhel-10.0-arm64", OK),
    ("centos 7.2", a("centos", "7.2"), "centos-7.2", OK),
    ("centos 7.1", a("centos", "7.1"), "centos-7.1", NO),
    ("centos 7 arm64", lin("OpenLogic", "CentOS", "7_9-arm64"), "centos-7.9-arm64", NO),
    ("centos 8.0", a("centos", "8.0"), "centos-8.0", OK),
    ("centos 8 arm64", lin("OpenLogic", "CentOS", "8_5-arm64"), "centos-8.5-arm64", NO),
    ("centos 9", a("centos", "9"), "centos-9", OK),
    ("centos 9 arm64", lin("OpenLogic", "CentOS", "9-arm64"), "centos-9-arm64", OK),
    ("centos 10", a("centos", "10"), "centos-10", OK),
    ("centos 10 arm64", lin("OpenLogic", "CentOS", "10-arm64"), "centos-10-arm64", OK),
    ("centos stream 8", a("CentOS Stream", "8"), "centos-stream-8", OK),
    ("centos stream 8 arm64", lin("OpenLogic", "centos-stream-arm64", "8-arm64"), "centos-stream-8-arm64", OK),
    ("centos stream 9", a("CentOS Stream", "9"), "centos-stream-9", OK),
    ("centos stream 9 arm64", lin("OpenLogic", "centos-stream-arm64", "9-arm64"), "centos-stream-9-arm64", OK),
    ("centos stream 10", a("CentOS Stream", "10"), "centos-stream-10", OK),
    ("centos stream 10 arm64", lin("OpenLogic", "centos-stream-arm64", "10-arm64"), "centos-stream-10-arm64", OK),
    ("centos stream 7", a("CentOS Stream", "7"), "centos-stream-7", NO),
    ("oracle 7.2", a("oracle", "7.2"), "oracle-7.2", OK),
    ("oracle 7.1", a("oracle", "7.1"), "oracle-7.1", NO),
    ("oracle 7 arm64", lin("Oracle", "Oracle-Linux", "ol79-arm64"), "oracle-7.9-arm64", NO),
    ("oracle 8.0", a("oracle", "8.0"), "oracle-8.0", OK),
    ("oracle 8 arm64", lin("Oracle", "Oracle-Linux", "ol88-lvm-arm64"), "oracle-8.8-arm64", OK),
    ("oracle 9.0", a("oracle", "9.0"), "oracle-9.0", OK),
    ("oracle 9 arm64", lin("Oracle", "Oracle-Linux", "ol94-lvm-arm64"), "oracle-9.4-arm64", OK),
    ("oracle 10.0", a("oracle", "10.0"), "oracle-10.0", OK),
    ("oracle 10 arm64", lin("Oracle", "Oracle-Linux", "ol10-lvm-arm64"), "oracle-10-arm64", OK),
    ("ubuntu 16.04", a("ubuntu", "16.04"), "ubuntu-16.04", OK),
    ("ubuntu 16.10", a("ubuntu", "16.10"), "ubuntu-16.10", NO),
    ("ubuntu 16.04 arm64", lin("Canonical", "UbuntuServer", "16_04-lts-arm64"), "ubuntu-16.04-arm64", NO),
    ("ubuntu 18.04", a("ubuntu", "18.04"), "ubuntu-18.04", OK),
    ("ubuntu 18.10", a("ubuntu", "18.10"), "ubuntu-18.10", NO),
    ("ubuntu 18.04 arm64", lin("Canonical", "UbuntuServer", "18_04-lts-arm64"), "ubuntu-18.04-arm64", NO),
    ("ubuntu 20.04", a("ubuntu", "20.04"), "ubuntu-20.04", OK),
    ("ubuntu 20.10", a("ubuntu", "20.10"), "ubuntu-20.10", NO),
    ("ubuntu 20.04 arm64", lin("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts-arm64"), "ubuntu-20.04-arm64", OK),
    ("ubuntu 22.04", a("ubuntu", "22.04"), "ubuntu-22.04", OK),
    ("ubuntu 22.10", a("ubuntu", "22.10"), "ubuntu-22.10", NO),
    ("ubuntu 22.04 arm64", lin("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-arm64"), "ubuntu-22.04-arm64", OK),
    ("ubuntu 24.04", a("ubuntu", "24.04"), "ubuntu-24.04", OK),
    ("ubuntu 24.10", a("ubuntu", "24.10"), "ubuntu-24.10", NO),
    ("ubuntu 24.04 arm64", lin("Canonical", "ubuntu-24_04-lts", "server-arm64"), "ubuntu-24.04-arm64", OK),
    ("ubuntu 26.04", a("ubuntu", "26.04"), "ubuntu-26.04", OK),
    ("ubuntu 26.10", a("ubuntu", "26.10"), "ubuntu-26.10", NO),
    ("ubuntu 26.04 arm64", lin("Canonical", "ubuntu-26_04-lts", "server-arm64"), "ubuntu-26.04-arm64", OK),
    # Ubuntu LTS only: exactly the .04 release of each major.
    *((f"ubuntu {major}.{minor:02d}", a("ubuntu", f"{major}.{minor:02d}"), f"ubuntu-{major}.{minor:02d}", NO)
      for major in (16, 18, 20, 22, 24, 26) for minor in (3, 5)),
    ("debian 9", a("debian", "9"), "debian-9", OK),
    ("debian 9 arm64", lin("Debian", "debian-9", "9-arm64"), "debian-9-arm64", NO),
    ("debian 10", a("debian", "10"), "debian-10", OK),
    ("debian 10 arm64", lin("Debian", "debian-10", "10-arm64"), "debian-10-arm64", NO),
    ("debian 11", a("debian", "11"), "debian-11", OK),
    ("debian 11 arm64", lin("Debian", "debian-11", "11-arm64"), "debian-11-arm64", OK),
    ("debian 12", a("debian", "12"), "debian-12", OK),
    ("debian 12 arm64", lin("Debian", "debian-12", "12-arm64"), "debian-12-arm64", OK),
    ("debian 13", a("debian", "13"), "debian-13", OK),
    ("debian 13 arm64", lin("Debian", "debian-13", "13-arm64"), "debian-13-arm64", OK),
    ("sles 12.0", a("sles", "12.0"), "sles-12.0", OK),
    ("sles 12 arm64", lin("SUSE", "sles-12-sp5-arm64", "gen2"), "sles-12.5-arm64", NO),
    ("sles 15.0", a("sles", "15.0"), "sles-15.0", OK),
    ("sles 15 sp4 arm64", lin("SUSE", "sles-15-sp4-arm64", "gen2"), "sles-15.4-arm64", NO),
    ("sles 15 sp5 arm64", lin("SUSE", "sles-15-sp5-arm64", "gen2"), "sles-15.5-arm64", OK),
    ("sles 15 sp6 arm64", lin("SUSE", "sles-15-sp6-arm64", "gen2"), "sles-15.6-arm64", OK),
    ("sles 15 sp7 arm64", lin("SUSE", "sles-15-sp7-arm64", "gen2"), "sles-15.7-arm64", NO),
    ("sles 16.0", a("sles", "16.0"), "sles-16.0", OK),
    ("sles 16 arm64", lin("SUSE", "sles-16-0-arm64", "gen2"), "sles-16.0-arm64", OK),
    ("opensuse 15.6", a("opensuse-leap", "15.6"), "opensuse-15.6", OK),
    ("opensuse 15.5", a("opensuse-leap", "15.5"), "opensuse-15.5", NO),
    ("opensuse 15.7", a("opensuse-leap", "15.7"), "opensuse-15.7", NO),
    ("opensuse 15.6 arm64", lin("SUSE", "opensuse-leap-15-6-arm64", "gen2"), "opensuse-15.6-arm64", OK),
    ("opensuse 16.0", a("opensuse-leap", "16.0"), "opensuse-16.0", OK),
    ("opensuse 16 arm64", lin("SUSE", "opensuse-leap-16-0-arm64", "gen2"), "opensuse-16.0-arm64", OK),
    ("amazon linux 2", a("amzn", "2"), "amazon-linux-2", OK),
    ("amazon linux 2 arm64", lin("amazon", "amzn2-arm64", "2-arm64"), "amazon-linux-2-arm64", NO),
    ("amazon linux 2023", a("amzn", "2023"), "amazon-linux-2023", OK),
    ("amazon linux 2023 arm64", lin("amazon", "al2023-arm64", "2023-arm64"), "amazon-linux-2023-arm64", OK),
    *((f"fedora {major}", a("fedora", str(major)), f"fedora-{major}", OK) for major in range(33, 45)),
    ("fedora 32", a("fedora", "32"), "fedora-32", NO),
    ("fedora 45", a("fedora", "45"), "fedora-45", NO),
    *((f"fedora {major} arm64", lin("Fedora", "fedora", f"{major}-arm64"), f"fedora-{major}-arm64", NO) for major in range(33, 40)),
    ("fedora 40 arm64", lin("Fedora", "fedora", "40-arm64"), "fedora-40-arm64", OK),
    ("fedora 44 arm64", lin("Fedora", "fedora", "44-arm64"), "fedora-44-arm64", OK),
    ("rocky 8.7", a("rocky", "8.7"), "rocky-8.7", OK),
    ("rocky 8.6", a("rocky", "8.6"), "rocky-8.6", NO),
    ("rocky 8 aarch64", lin("resf", "rockylinux-aarch64", "8_9-aarch64"), "rocky-8.9-arm64", OK),
    ("rocky 9.2", a("rocky", "9.2"), "rocky-9.2", OK),
    ("rocky 9.1", a("rocky", "9.1"), "rocky-9.1", NO),
    ("rocky 9 arm64", lin("resf", "rockylinux-arm64", "9_4-arm64"), "rocky-9.4-arm64", OK),
    ("rocky 10.0", a("rocky", "10.0"), "rocky-10.0", OK),
    ("rocky 10 arm64", lin("resf", "rockylinux-arm64", "10-base-arm64"), "rocky-10-arm64", OK),
    ("alma 8.4", a("almalinux", "8.4"), "alma-8.4", OK),
    ("alma 8.3", a("almalinux", "8.3"), "alma-8.3", NO),
    ("alma 8 arm64", lin("almalinux", "almalinux-arm", "8_9-arm64"), "alma-8.9-arm64", OK),
    ("alma 9.2", a("almalinux", "9.2"), "alma-9.2", OK),
    ("alma 9.1", a("almalinux", "9.1"), "alma-9.1", NO),
    ("alma 9 arm64", lin("almalinux", "almalinux-arm", "9-arm64"), "alma-9-arm64", OK),
    ("alma 10.0", a("almalinux", "10.0"), "alma-10.0", OK),
    ("alma 10 arm64", lin("almalinux", "almalinux-arm", "10-arm64"), "alma-10-arm64", OK),
    ("mariner 2.0", a("mariner", "2.0"), "mariner-2.0", OK),
    ("mariner 2 arm64", lin("MicrosoftCBLMariner", "cbl-mariner", "cbl-mariner-2-arm64"), "mariner-2-arm64", OK),
    ("mariner 1", a("mariner", "1.0"), "mariner-1.0", NO),
]
# fmt: on


@pytest.mark.parametrize(
    ("facts_", "platform", "support"),
    [row[1:] for row in LINUX_BOUNDS],
    ids=[row[0] for row in LINUX_BOUNDS],
)
def test_each_row_of_the_linux_matrix_at_its_bounds(facts_, platform, support):
    result = classify(facts_, TAG)
    assert (result.os, result.platform, result.support) == (L, platform, support)


def test_unsupported_platforms_say_what_to_do_instead():
    for case, facts_, _, _, support, _ in MATRIX:
        if support in {NO, UNK}:
            assert classify(facts_, TAG).support_note, case


def test_extension_type_follows_the_os():
    assert classify(win("WindowsServer", "2022-datacenter"), TAG).extension == "MDE.Windows"
    assert classify(lin("Canonical", "UbuntuServer", "18.04-LTS"), TAG).extension == "MDE.Linux"
    assert classify(facts(), TAG).extension == ""


UNKNOWN_NOTE = (
    "the image names no OS and the guest agent has not reported one: start the VM and check "
    "its guest agent, or onboard it by hand"
)

# (case, facts, the support note, word for word)
# fmt: off
NOTES = [
    ("ws2022", win("WindowsServer", "2022-datacenter"), ""),
    ("ws2012", win("WindowsServer", "2012-Datacenter"),
     "Windows Server 2012 (not R2) cannot be onboarded to MDE: upgrade the OS"),
    ("ws2008 r2", win("WindowsServer", "2008-R2-SP1"),
     "Windows Server 2008 R2 SP1 cannot be onboarded through the extension: onboard it with the Defender deployment tool, or upgrade the OS"),
    ("win11 single session", win("windows-11", "win11-23h2-ent", publisher="MicrosoftWindowsDesktop"),
     "single-session Windows 10/11 cannot be onboarded through the MDE.Windows extension "
     "(it fails with code 51): onboard it with Intune or Group Policy"),
    ("win11 multi-session", win("windows-11", "win11-23h2-avd", publisher="MicrosoftWindowsDesktop"), ""),
    ("win7", win("windows-7", "win7-enterprise", publisher="MicrosoftWindowsDesktop"),
     "Windows 7 cannot be onboarded through the extension: onboard SP1 with the Defender deployment tool, or upgrade it"),
    ("nothing known", facts(), UNKNOWN_NOTE),
    ("windows with nothing else", facts(os_type="Windows"), UNKNOWN_NOTE),
    ("linux with nothing else", facts(os_type="Linux"), UNKNOWN_NOTE),
    ("distro name of symbols only", agent("Linux", "???", "1.0"), UNKNOWN_NOTE),
    ("flatcar", lin("kinvolk", "flatcar-container-linux-free", "stable-gen2"),
     "flatcar is not a distribution MDE for Linux supports: onboard it by hand"),
    ("distro without version", agent("Linux", "ubuntu", ""),
     "cannot tell which ubuntu version this is: check the guest agent"),
    ("ubuntu interim release", lin("Canonical", "0001-com-ubuntu-server-mantic", "23_10"),
     "ubuntu-23.10 is not on MDE for Linux's list of supported distributions and architectures: "
     "move to a supported version, or onboard it by hand if Microsoft supports it otherwise"),
    ("debian 12", lin("Debian", "debian-12", "12"), ""),
]
# fmt: on


@pytest.mark.parametrize(
    ("facts_", "note"), [row[1:] for row in NOTES], ids=[row[0] for row in NOTES]
)
def test_each_platform_says_what_to_do_in_its_own_words(facts_, note):
    assert classify(facts_, TAG).support_note == note


PYTHON3 = "the extension needs python3 on the machine"

# (distro as the guest agent names it, version, the python3 caveat or none)
# fmt: off
PYTHON3_CAVEATS = [
    ("rhel", "8.6", PYTHON3),
    ("ubuntu", "20.04", PYTHON3),
    ("ubuntu", "22.04", PYTHON3),
    ("ubuntu", "24.04", PYTHON3),
    ("ubuntu", "26.04", PYTHON3),
    ("rhel", "7.9", ""),
    ("rhel", "9.4", ""),
    ("rhel", "10.0", ""),
    ("ubuntu", "18.04", ""),
    ("ubuntu", "16.04", ""),
    ("centos", "8.5", ""),
    ("oracle", "8.6", ""),
    ("alma", "8.7", ""),
    ("rocky", "8.7", ""),
    ("debian", "11", ""),
    ("sles", "15.5", ""),
]
# fmt: on


@pytest.mark.parametrize(("distro", "version", "note"), PYTHON3_CAVEATS)
def test_the_python3_caveat_is_given_exactly_where_the_extension_needs_it(distro, version, note):
    result = classify(agent("Linux", distro, version), TAG)
    assert (result.support, result.support_note) == (OK, note)


# (case, facts, why it is not ours to touch, word for word)
# fmt: off
MANAGED = [
    ("databricks", lin("AzureDatabricks", "databricks", "databricksworker"), "the image (AzureDatabricks) makes it an Azure Databricks cluster node"),
    ("openshift", lin("azureopenshift", "aro4", "aro_414"), "the image (azureopenshift) makes it an Azure Red Hat OpenShift node"),
    ("aks image", lin("microsoft-aks", "aks", "aks-ubuntu-2204"), "the image (microsoft-aks) makes it an AKS node"),
    ("aks publisher", lin("AKS", "aks-engine", "aks-ubuntu-1804"), "the image (AKS) makes it an AKS node"),
    ("fortinet", lin("fortinet", "fortinet_fortigate-vm_v5", "fortinet_fg-vm"), "the image (fortinet) makes it a Fortinet network appliance"),
    ("palo alto", lin("paloaltonetworks", "vmseries-flex", "byol"), "the image (paloaltonetworks) makes it a Palo Alto Networks appliance"),
    ("check point", lin("checkpoint", "check-point-cg-r8110", "sg-byol"), "the image (checkpoint) makes it a Check Point appliance"),
    ("barracuda", lin("barracudanetworks", "barracuda-ng-firewall", "byol"), "the image (barracudanetworks) makes it a Barracuda appliance"),
    ("cisco", lin("cisco", "cisco-csr-1000v", "17_3_4a-byol"), "the image (cisco) makes it a Cisco appliance"),
    ("f5", lin("f5-networks", "f5-big-ip-best", "f5-bigip-virtual-edition-25m-best-hourly"), "the image (f5-networks) makes it an F5 appliance"),
    ("citrix", lin("citrix", "netscalervpx-131", "netscalerbyol"), "the image (citrix) makes it a Citrix appliance"),
    ("sophos", lin("sophos", "sophos-xg", "byol"), "the image (sophos) makes it a Sophos appliance"),
    ("juniper", lin("juniper-networks", "vsrx-next-generation", "vsrx-byol-azure-image"), "the image (juniper-networks) makes it a Juniper appliance"),
    ("vmware", lin("vmware-inc", "sol-42222-bbj", "byol"), "the image (vmware-inc) makes it a VMware appliance"),
    ("firewall offer", lin("someisv", "next-gen-firewall", "byol"), "the image offer next-gen-firewall is a firewall appliance"),
    ("firewall offer in capitals", lin("someisv", "NextGen-FIREWALL", "byol"), "the image offer NextGen-FIREWALL is a firewall appliance"),
    ("aks node group", lin("Canonical", "UbuntuServer", "18.04-LTS", group="MC_rg_aks_westeurope"), "it is in an AKS node resource group (MC_rg_aks_westeurope)"),
    ("aks node group in lower case", lin("Canonical", "UbuntuServer", "18.04-LTS", group="mc_rg_aks_westeurope"), "it is in an AKS node resource group (mc_rg_aks_westeurope)"),
    ("databricks group", lin("Canonical", "UbuntuServer", "18.04-LTS", group="databricks-rg-ws-abc"), "it is in a Databricks managed group (databricks-rg-ws-abc)"),
    ("a group that only contains mc_", lin("Canonical", "UbuntuServer", "18.04-LTS", group="rg-mc_prod"), ""),
    ("a group that only contains databricks-rg-", lin("Canonical", "UbuntuServer", "18.04-LTS", group="old-databricks-rg-x"), ""),
    ("a group starting with mc but not mc_", lin("Canonical", "UbuntuServer", "18.04-LTS", group="mcdonald-rg"), ""),
    ("an ordinary image", lin("Canonical", "UbuntuServer", "18.04-LTS"), ""),
]
# fmt: on


@pytest.mark.parametrize(
    ("facts_", "managed"), [row[1:] for row in MANAGED], ids=[row[0] for row in MANAGED]
)
def test_managed_service_and_appliance_vms_are_recognised(facts_, managed):
    assert classify(facts_, TAG).managed == managed


# fmt: off
OPT_OUTS = [
    ({TAG: "true"}, None, f"tag {TAG}=true"),
    ({TAG: ""}, None, f"tag {TAG}="),
    ({TAG.upper(): "yes"}, None, f"tag {TAG}=yes"),
    ({TAG: "false"}, None, ""),
    ({TAG: " FALSE "}, None, ""),
    ({"ExcludeMdeAutoProvisioning": "true"}, None, "tag ExcludeMdeAutoProvisioning=true"),
    ({"excludemdeautoprovisioning": "True"}, None, "tag ExcludeMdeAutoProvisioning=true"),
    ({"ExcludeMdeAutoProvisioning": "false"}, None, ""),
    ({}, "Free", "VM-level Defender for Servers pricing is Free"),
    ({}, "Standard", ""),
    ({}, None, ""),
]
# fmt: on


@pytest.mark.parametrize(("tags", "vm_pricing", "opt_out"), OPT_OUTS)
def test_opt_outs(tags, vm_pricing, opt_out):
    vm = lin("Canonical", "UbuntuServer", "18.04-LTS", tags=tags, vm_pricing=vm_pricing)
    assert classify(vm, TAG).opt_out == opt_out


def mde(state, type_="MDE.Linux", code=None, publisher=MDE_PUBLISHER):
    return ExtensionFacts(type_, publisher, type_, state, code)


# fmt: off
PROTECTION = [
    ((), Protection.ABSENT, None),
    ((mde("Succeeded"),), Protection.SUCCEEDED, None),
    ((mde("Failed", code=10),), Protection.FAILED, 10),
    ((mde("Failed"),), Protection.FAILED, None),
    ((mde("Canceled"),), Protection.FAILED, None),
    ((mde("Creating"),), Protection.IN_PROGRESS, None),
    ((mde("Updating"),), Protection.IN_PROGRESS, None),
    ((mde("Deleting"),), Protection.IN_PROGRESS, None),
    ((mde("Succeeded", publisher="Someone.Else"),), Protection.ABSENT, None),
    ((mde("Succeeded", type_="MDE.Windows"),), Protection.SUCCEEDED, None),
    ((mde("Succeeded", type_="MDE.Windows"), mde("Failed", code=10)), Protection.FAILED, 10),
    ((mde("Failed", type_="MDE.Windows", code=51), mde("Succeeded")), Protection.SUCCEEDED, None),
    ((mde("Failed", type_="MDE.Windows", code=51), mde("Creating", type_="mde.linux")), Protection.IN_PROGRESS, None),
]
# fmt: on


@pytest.mark.parametrize(("extensions", "protection", "code"), PROTECTION)
def test_protection_state(extensions, protection, code):
    result = classify(lin("Canonical", "UbuntuServer", "18.04-LTS", extensions=extensions), TAG)
    assert (result.protection, result.failure_code) == (protection, code)


def test_other_failed_extensions_are_listed():
    extensions = (
        ExtensionFacts(
            "OmsAgentForLinux", "Microsoft.EnterpriseCloud.Monitoring", "OmsAgentForLinux", "Failed"
        ),
        ExtensionFacts("CustomScript", "Microsoft.Azure.Extensions", "CustomScript", "Succeeded"),
        mde("Failed"),
    )
    result = classify(lin("Canonical", "UbuntuServer", "18.04-LTS", extensions=extensions), TAG)
    assert result.failed_extensions == ("OmsAgentForLinux",)


@pytest.mark.parametrize("power", list(Power))
def test_power_state_is_carried(power):
    assert classify(lin("Canonical", "UbuntuServer", "18.04-LTS", power=power), TAG).power is power


@pytest.mark.parametrize("ready", [True, False, None])
def test_the_vm_and_its_guest_agent_state_are_carried(ready):
    result = classify(agent("Linux", "ubuntu", "22.04", agent_ready=ready), TAG)
    assert (result.vm, result.agent_ready) == (VmRef(SUB, "rg", "vm1"), ready)


# --- ARM and Resource Graph readers give equal facts ---------------------------------
VM_ID = (
    f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachines/app-7"
)
PROPERTIES = {
    "vmId": "0f0e0d0c-0000-4000-8000-000000000007",
    "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
    "storageProfile": {
        "imageReference": {
            "publisher": "RedHat",
            "offer": "RHEL",
            "sku": "86-gen2",
            "version": "latest",
        },
        "osDisk": {"osType": "Linux", "name": "app-7-os", "createOption": "FromImage"},
    },
    "osProfile": {"computerName": "app-7", "adminUsername": "azureuser"},
    "provisioningState": "Succeeded",
}
EXTENSIONS = [
    ("MDE.Linux", MDE_PUBLISHER, "MDE.Linux", "Failed"),
    ("AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor", "AzureMonitorLinuxAgent", "Succeeded"),
]


def arm_vm():
    return {
        "id": VM_ID,
        "name": "app-7",
        "type": "Microsoft.Compute/virtualMachines",
        "location": "westeurope",
        "tags": {"env": "prod"},
        "properties": copy.deepcopy(PROPERTIES)
        | {
            "instanceView": {
                "computerName": "app-7",
                "osName": "redhat",
                "osVersion": "8.6",
                "statuses": [
                    {"code": "ProvisioningState/succeeded", "level": "Info"},
                    {"code": "PowerState/running", "level": "Info", "displayStatus": "VM running"},
                ],
                "extensions": [
                    {
                        "name": "MDE.Linux",
                        "type": "Microsoft.Azure.AzureDefenderForServers.MDE.Linux",
                        "statuses": [
                            {
                                "code": "ProvisioningState/failed/10",
                                "level": "Error",
                                "message": "Unsupported distro",
                            }
                        ],
                    }
                ],
            }
        },
        "resources": [
            {
                "id": f"{VM_ID}/extensions/{name}",
                "name": name,
                "type": "Microsoft.Compute/virtualMachines/extensions",
                "location": "westeurope",
                "properties": {
                    "publisher": publisher,
                    "type": type_,
                    "typeHandlerVersion": "1.0",
                    "provisioningState": state,
                },
            }
            for name, publisher, type_, state in EXTENSIONS
        ],
    }


def graph_row():
    """The sweep query's projection of the same VM."""
    return {
        "id": VM_ID,
        "location": "westeurope",
        "tags": {"env": "prod"},
        "imageReference": copy.deepcopy(PROPERTIES["storageProfile"]["imageReference"]),
        "osType": "Linux",
        "licenseType": "",
        "vmId": PROPERTIES["vmId"],
        "instanceView": {
            "computerName": "app-7",
            "osName": "redhat",
            "osVersion": "8.6",
            "powerState": {
                "code": "PowerState/running",
                "level": "Info",
                "displayStatus": "VM running",
            },
        },
        "extensions": [
            {"name": name, "publisher": publisher, "type": type_, "provisioningState": state}
            for name, publisher, type_, state in reversed(EXTENSIONS)
        ],
    }


def test_arm_and_resource_graph_give_equal_facts_but_the_failure_code():
    from_arm = facts_from_arm(arm_vm())
    from_graph = facts_from_graph(graph_row())
    assert from_arm.extensions[1].code == 10  # only the instance view carries it
    without_codes = tuple(
        ExtensionFacts(e.name, e.publisher, e.type, e.state) for e in from_arm.extensions
    )
    assert VmFacts(**{**_fields(from_arm), "extensions": without_codes}) == from_graph
    assert from_graph.power is Power.RUNNING
    assert classify(from_arm, TAG).platform == classify(from_graph, TAG).platform == "rhel-8.6"


def _fields(value):
    return {name: getattr(value, name) for name in value.__slots__}


def test_arm_reader_tolerates_a_vm_without_instance_view():
    vm = arm_vm()
    del vm["properties"]["instanceView"]
    del vm["resources"]
    result = facts_from_arm(vm)
    assert result.power is Power.UNKNOWN
    assert result.extensions == ()
    assert classify(result, TAG).platform == "rhel-8.6"


NO_STATUSES = object()

# (the MDE extension's instance view statuses, the failure code read from them)
# fmt: off
FAILURE_CODES = [
    ([{"code": "ProvisioningState/failed/51", "message": "not supported"}], 51),
    ([{"code": "provisioningstate/FAILED/52"}], 52),
    ([{"code": "ProvisioningState/failed/51x"}], None),
    ([{"code": "ProvisioningState/failed", "message": "Enable failed: exit code 31"}], 31),
    ([{"code": "ProvisioningState/failed", "message": "Enable failed: exit code: 23"}], 23),
    ([{"code": "ProvisioningState/failed", "message": "The script exited with code 10"}], 10),
    ([{"code": "ProvisioningState/failed", "message": "Install failed. Exit Code 21"}], 21),
    ([{"code": "ProvisioningState/failed", "message": "no code here"}], None),
    ([{"code": "ComponentStatus/mde/succeeded"}, {"code": "ProvisioningState/failed/4"}], 4),
    ([], None),
    ({"code": "ProvisioningState/failed/51"}, None),
    (NO_STATUSES, None),
]
# fmt: on


@pytest.mark.parametrize(("statuses", "code"), FAILURE_CODES)
def test_failure_codes_are_read_from_the_instance_view(statuses, code):
    vm = arm_vm()
    if statuses is NO_STATUSES:
        del vm["properties"]["instanceView"]["extensions"][0]["statuses"]
    else:
        vm["properties"]["instanceView"]["extensions"][0]["statuses"] = statuses
    assert facts_from_arm(vm).extensions[1].code == code


def test_an_extension_that_is_not_failed_has_no_failure_code_from_a_stale_instance_view():
    vm = arm_vm()
    vm["resources"][0]["properties"]["provisioningState"] = "Succeeded"
    assert facts_from_arm(vm).extensions[1].code is None


def test_gallery_image_ids_are_kept():
    vm = arm_vm()
    gallery = f"/subscriptions/{SUB}/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/rhel"
    vm["properties"]["storageProfile"]["imageReference"] = {"id": gallery}
    result = facts_from_arm(vm)
    assert (result.image_id, result.publisher) == (gallery, "")
    assert classify(result, TAG).platform == "rhel-8.6"  # from the guest agent


def test_the_arm_reader_reads_every_fact():
    vm = arm_vm()
    vm["tags"] = {"env": "prod", "cost-centre": 42}
    vm["properties"]["licenseType"] = "RHEL_BYOS"
    vm["properties"]["instanceView"]["vmAgent"] = {
        "vmAgentVersion": "2.7.41491.1102",
        "statuses": [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": "Ready",
                "message": "Guest Agent is running",
            }
        ],
    }
    assert facts_from_arm(vm, vm_pricing="Standard") == VmFacts(
        vm=VmRef(SUB, "rg-app", "app-7"),
        location="westeurope",
        os_type="Linux",
        publisher="RedHat",
        offer="RHEL",
        sku="86-gen2",
        image_id="",
        license_type="RHEL_BYOS",
        os_name="redhat",
        os_version="8.6",
        agent_ready=True,
        power=Power.RUNNING,
        tags={"env": "prod", "cost-centre": "42"},
        extensions=(
            ExtensionFacts(
                "AzureMonitorLinuxAgent",
                "Microsoft.Azure.Monitor",
                "AzureMonitorLinuxAgent",
                "Succeeded",
                None,
            ),
            ExtensionFacts("MDE.Linux", MDE_PUBLISHER, "MDE.Linux", "Failed", 10),
        ),
        vm_pricing="Standard",
        vm_id="0f0e0d0c-0000-4000-8000-000000000007",
    )


def test_the_resource_graph_reader_reads_every_fact():
    row = graph_row()
    row["tags"] = {"env": "prod", "cost-centre": 42}
    row["licenseType"] = "RHEL_BYOS"
    assert facts_from_graph(row) == VmFacts(
        vm=VmRef(SUB, "rg-app", "app-7"),
        location="westeurope",
        os_type="Linux",
        publisher="RedHat",
        offer="RHEL",
        sku="86-gen2",
        image_id="",
        license_type="RHEL_BYOS",
        os_name="redhat",
        os_version="8.6",
        agent_ready=None,
        power=Power.RUNNING,
        tags={"env": "prod", "cost-centre": "42"},
        extensions=(
            ExtensionFacts(
                "AzureMonitorLinuxAgent",
                "Microsoft.Azure.Monitor",
                "AzureMonitorLinuxAgent",
                "Succeeded",
            ),
            ExtensionFacts("MDE.Linux", MDE_PUBLISHER, "MDE.Linux", "Failed"),
        ),
        vm_pricing=None,
        vm_id="0f0e0d0c-0000-4000-8000-000000000007",
    )


def test_tags_that_are_not_an_object_are_no_tags():
    vm, row = arm_vm(), graph_row()
    vm["tags"] = row["tags"] = ["env", "prod"]
    assert facts_from_arm(vm).tags == facts_from_graph(row).tags == {}


def windows_client_vm():
    vm = arm_vm()
    vm["properties"]["storageProfile"]["imageReference"] = {"id": GALLERY}
    vm["properties"]["storageProfile"]["osDisk"]["osType"] = "Windows"
    vm["properties"]["licenseType"] = "Windows_Client"
    del vm["properties"]["instanceView"]
    return vm


def test_a_client_licence_is_read_by_both_readers():
    row = graph_row()
    row["imageReference"] = {"id": GALLERY}
    row["osType"] = "Windows"
    row["licenseType"] = "Windows_Client"
    del row["instanceView"]
    for facts_ in (facts_from_arm(windows_client_vm()), facts_from_graph(row)):
        assert facts_.license_type == "Windows_Client"
        assert classify(facts_, TAG).platform == "windows-client"


GALLERY = (
    f"/subscriptions/{SUB}/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/rhel"
)
SHARED = "/SharedGalleries/0f0e0d0c-1111-4111-8111-abcdefabcdef-CONTOSO/Images/rhel/Versions/latest"
COMMUNITY = (
    "/CommunityGalleries/contoso-1a2b3c4d-0000-4000-8000-000000000000/Images/rhel/Versions/1.0.0"
)

# (image reference, the image id the readers keep)
# fmt: off
GALLERY_IMAGES = [
    ({"id": GALLERY}, GALLERY),
    ({"sharedGalleryImageId": SHARED}, SHARED),
    ({"communityGalleryImageId": COMMUNITY}, COMMUNITY),
    ({"id": GALLERY, "sharedGalleryImageId": SHARED}, GALLERY),
    ({"sharedGalleryImageId": SHARED, "communityGalleryImageId": COMMUNITY}, SHARED),
    ({"publisher": "RedHat", "offer": "RHEL", "sku": "86-gen2", "version": "latest"}, ""),
]
# fmt: on


@pytest.mark.parametrize(("reference", "image_id"), GALLERY_IMAGES)
def test_an_image_from_a_gallery_is_known_by_its_id(reference, image_id):
    vm, row = arm_vm(), graph_row()
    vm["properties"]["storageProfile"]["imageReference"] = reference
    row["imageReference"] = reference
    assert facts_from_arm(vm).image_id == facts_from_graph(row).image_id == image_id


# (instanceView.vmAgent, the guest agent reported Ready)
# fmt: off
AGENTS = [
    ("unresponsive", {"vmAgentVersion": "Unknown", "statuses": [{"code": "ProvisioningState/Unavailable", "level": "Warning", "displayStatus": "Not Ready", "message": "VM Agent is unresponsive."}]}, False),
    ("ready", {"vmAgentVersion": "2.7.41491.1102", "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Ready", "message": "Guest Agent is running"}]}, True),
    ("ready, written otherwise", {"statuses": [{"displayStatus": " READY "}]}, True),
    ("not ready, written otherwise", {"statuses": [{"displayStatus": "not ready"}]}, False),
    ("the first status that tells", {"statuses": [{"displayStatus": "Provisioning"}, {"displayStatus": "Ready"}]}, True),
    ("statuses that tell nothing", {"statuses": [{"code": "ProvisioningState/succeeded"}]}, None),
    ("no statuses", {"vmAgentVersion": "Unknown"}, None),
    ("no vmAgent", None, None),
]
# fmt: on


@pytest.mark.parametrize(
    ("agent_view", "ready"), [r[1:] for r in AGENTS], ids=[r[0] for r in AGENTS]
)
def test_the_guest_agent_state_is_read_from_the_instance_view(agent_view, ready):
    vm = arm_vm()
    if agent_view is not None:
        vm["properties"]["instanceView"]["vmAgent"] = agent_view
    assert facts_from_arm(vm).agent_ready is ready


NO_POWER_STATE = object()

# (Resource Graph powerState.code, the power state)
# fmt: off
POWER_CODES = [
    ("PowerState/running", Power.RUNNING),
    ("PowerState/deallocated", Power.DEALLOCATED),
    ("powerstate/Stopped", Power.STOPPED),
    ("PowerState/starting", Power.STARTING),
    ("PowerState/hibernated", Power.UNKNOWN),
    ("PowerState/running/extra", Power.UNKNOWN),
    ("PowerState/x/running", Power.UNKNOWN),
    ("running", Power.UNKNOWN),
    (42, Power.UNKNOWN),
    (NO_POWER_STATE, Power.UNKNOWN),
]
# fmt: on


@pytest.mark.parametrize(("code", "power"), POWER_CODES)
def test_the_power_state_is_read_from_its_code(code, power):
    row = graph_row()
    if code is NO_POWER_STATE:
        del row["instanceView"]["powerState"]
    else:
        row["instanceView"]["powerState"]["code"] = code
    assert facts_from_graph(row).power is power


def test_a_row_without_instance_view_has_no_os_and_no_power():
    row = graph_row()
    del row["instanceView"]
    result = facts_from_graph(row)
    assert (result.os_name, result.os_version, result.power) == ("", "", Power.UNKNOWN)


def test_both_readers_order_extensions_by_name_whatever_the_case():
    names = ["Zeta", "alpha", "a_b", "aB"]
    vm, row = arm_vm(), graph_row()
    vm["resources"] = [
        {
            "name": name,
            "properties": {"publisher": "P", "type": "T", "provisioningState": "Succeeded"},
        }
        for name in names
    ]
    row["extensions"] = [
        {"name": name, "publisher": "P", "type": "T", "provisioningState": "Succeeded"}
        for name in names
    ]
    for facts_ in (facts_from_arm(vm), facts_from_graph(row)):
        assert [ext.name for ext in facts_.extensions] == ["a_b", "aB", "alpha", "Zeta"]


# fmt: off
ELIGIBLE = [
    ("a running supported Linux", lin("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"), True),
    ("a running Windows Server 2012 R2 (the unified solution)", win("WindowsServer", "2012-R2-Datacenter"), True),
    ("a stopped supported Linux", lin("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", power=Power.STOPPED), False),
    ("a deallocated Windows Server", win("WindowsServer", "2022-datacenter", power=Power.DEALLOCATED), False),
    ("an unsupported OS", win("Windows-10", "win10-22h2-pro", publisher="MicrosoftWindowsDesktop"), False),
    ("opted out by tag", lin("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", tags={TAG: "true"}), False),
    ("a managed service's VM", lin("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", group="MC_rg_aks_westeurope"), False),
]
# fmt: on


@pytest.mark.parametrize(
    ("facts_", "eligible"), [row[1:] for row in ELIGIBLE], ids=[row[0] for row in ELIGIBLE]
)
def test_coverage_counts_running_supported_vms_that_are_neither_opted_out_nor_managed(
    facts_, eligible
):
    assert classify(facts_, TAG).eligible_running is eligible


def agent_ext(publisher, type_, state="Succeeded"):
    return ExtensionFacts(type_, publisher, type_, state)


# (case, extensions, power, image publisher, findings)
# fmt: off
FINDINGS_TABLE = [
    ("no extension at all", (), Power.RUNNING, "Canonical", ("no-monitoring-agent",)),
    ("only MDE", (mde("Succeeded"),), Power.RUNNING, "Canonical", ("no-monitoring-agent",)),
    ("AMA for Linux", (agent_ext("Microsoft.Azure.Monitor", "AzureMonitorLinuxAgent"),), Power.RUNNING, "Canonical", ()),
    ("AMA for Windows", (agent_ext("Microsoft.Azure.Monitor", "AzureMonitorWindowsAgent"),), Power.RUNNING, "Canonical", ()),
    ("legacy Log Analytics agent, Windows", (agent_ext("Microsoft.EnterpriseCloud.Monitoring", "MicrosoftMonitoringAgent"),), Power.RUNNING, "Canonical", ()),
    ("legacy Log Analytics agent, Linux", (agent_ext("Microsoft.EnterpriseCloud.Monitoring", "OmsAgentForLinux"),), Power.RUNNING, "Canonical", ()),
    ("any case", (agent_ext("microsoft.azure.monitor", "azuremonitorlinuxagent"),), Power.RUNNING, "Canonical", ()),
    ("the agent's type from another publisher", (agent_ext("Contoso", "AzureMonitorLinuxAgent"),), Power.RUNNING, "Canonical", ("no-monitoring-agent",)),
    ("the agent's publisher, another type", (agent_ext("Microsoft.Azure.Monitor", "DependencyAgentLinux"),), Power.RUNNING, "Canonical", ("no-monitoring-agent",)),
    ("deallocated: not a finding", (), Power.DEALLOCATED, "Canonical", ()),
    ("stopped: not a finding", (), Power.STOPPED, "Canonical", ()),
    ("an appliance: not ours", (), Power.RUNNING, "fortinet", ()),
]
# fmt: on


@pytest.mark.parametrize(
    ("extensions", "power", "publisher", "findings"),
    [row[1:] for row in FINDINGS_TABLE],
    ids=[row[0] for row in FINDINGS_TABLE],
)
def test_the_monitoring_agent_finding(extensions, power, publisher, findings):
    vm = lin(publisher, "UbuntuServer", "22_04-lts", extensions=extensions, power=power)
    assert classify(vm, TAG).findings == findings


def test_no_exclusion_tag_set_excludes_nothing_even_a_tag_with_an_empty_name():
    tagged = lin("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", tags={"": "yes"})
    assert classify(tagged, "").opt_out == ""
    assert classify(tagged, TAG).opt_out == ""


# --- Run Command answers (facts.run_output: the test alert reads them) ---------------------
@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (  # Windows: one status per stream (the spec's example)
            [
                ("ComponentStatus/StdOut/succeeded", "started"),
                ("ComponentStatus/StdErr/succeeded", ""),
            ],
            ("started", ""),
        ),
        (
            [
                ("ComponentStatus/StdOut/succeeded", ""),
                ("ComponentStatus/StdErr/succeeded", "denied"),
            ],
            ("", "denied"),
        ),
        (  # Linux: one status, both streams in its message
            [
                (
                    "ProvisioningState/succeeded",
                    "Enable succeeded: \n[stdout]\nfetched\n\n[stderr]\ncurl: (6)\n",
                )
            ],
            ("fetched", "curl: (6)"),
        ),
        ([("ProvisioningState/succeeded", "Enable succeeded")], ("Enable succeeded", "")),
        ([], ("", "")),
    ],
)
def test_run_command_output_of_either_os(statuses, expected):
    from remediation.facts import run_output

    assert run_output(statuses) == expected


# --- The Linux matrix against the page it cites (docs/os-matrix.md) -----------------------
def _page_column(column: str) -> tuple[set[tuple[int, int, int]], set[int]]:
    """A column of the page's table -> ({(major, lowest minor, highest minor)}, {majors
    whose support is retiring}). Written from the page's own notations: "7.2+", "8.x",
    "16.04", "15.6", a range with an en dash, "15 (SP5, SP6)", "2 (Support retiring ...)",
    "-"."""
    retiring = {int(m) for m in re.findall(r"(\d+) \(Support retiring[^)]*\)", column)}
    column = re.sub(r"(\d+) \(Support retiring[^)]*\)", "", column)
    entries: set[tuple[int, int, int]] = set()
    for item in (part.strip() for part in re.split(r",(?![^()]*\))", column)):
        if item in {"", "-"}:
            continue
        if m := re.fullmatch(r"(\d+)–(\d+)", item):  # noqa: RUF001 - the page's en dash
            entries |= {(major, 0, ANY) for major in range(int(m[1]), int(m[2]) + 1)}
        elif m := re.fullmatch(r"(\d+) \(SP(\d+), SP(\d+)\)", item):
            entries.add((int(m[1]), int(m[2]), int(m[3])))
        elif m := re.fullmatch(r"(\d+)\.(\d+)\+", item):
            entries.add((int(m[1]), int(m[2]), ANY))
        elif m := re.fullmatch(r"(\d+)\.x", item):
            entries.add((int(m[1]), 0, ANY))
        elif m := re.fullmatch(r"(\d+)\.(\d+)", item):
            entries.add((int(m[1]), int(m[2]), int(m[2])))
        elif m := re.fullmatch(r"(\d+)", item):
            entries.add((int(m[1]), 0, ANY))
        else:
            raise AssertionError(f"a notation the page did not use: {item!r}")
    return entries, retiring


def _page_line(cite: str) -> dict[str, tuple[set[tuple[int, int, int]], set[int]]]:
    _, name, x64, arm64, _ = (cell.strip() for cell in cite.split("|"))
    assert name
    return {"x64": _page_column(x64), "arm64": _page_column(arm64)}


def test_every_linux_row_says_what_the_line_it_cites_says():
    for row in LINUX_MATRIX:
        line = _page_line(row.cite)
        for arch in ("x64", "arm64"):
            listed, retiring = line[arch]
            on_page = (row.major, row.lowest_minor, row.highest_minor) in listed
            assert (arch in row.arches) is on_page, (row, arch)
            assert row.major not in retiring or arch not in row.arches, (row, arch)


def test_every_version_on_the_page_has_its_row():
    from remediation.classify import _PAGE

    for distro, cite in _PAGE.items():
        for arch, (listed, _) in _page_line(cite).items():
            for major, low, high in listed:
                assert any(
                    (row.distro, row.major, row.lowest_minor, row.highest_minor)
                    == (distro, major, low, high)
                    and arch in row.arches
                    and row.cite == cite
                    for row in LINUX_MATRIX
                ), (distro, arch, major, low, high)


def test_every_cited_line_is_in_the_stored_copy_of_the_page():
    from pathlib import Path

    from remediation.classify import LINUX_SOURCE

    stored = (Path(__file__).resolve().parent.parent / "docs" / "os-matrix.md").read_text()
    assert "ms.date 2026-09-14" in LINUX_SOURCE
    assert "**ms.date 2026-09-14**" in stored
    table = stored[
        stored.index("| Distribution | x64") : stored.index(
            "```", stored.index("| Distribution | x64")
        )
    ]
    for row in LINUX_MATRIX:
        assert f"\n{row.cite}\n" in table, row


def _readme_linux_table() -> str:
    """The README's Linux table, as LINUX_MATRIX says it."""

    def versions(rows, arch: str) -> str:
        listed = []
        for row in rows:
            if arch not in row.arches:
                continue
            if row.distro == "ubuntu":
                listed.append(f"{row.major}.{row.lowest_minor:02d}")
            elif row.lowest_minor == row.highest_minor:
                listed.append(f"{row.major}.{row.lowest_minor}")
            elif row.highest_minor != ANY:
                listed.append(f"{row.major} SP{row.lowest_minor}-SP{row.highest_minor}")
            elif row.lowest_minor:
                listed.append(f"{row.major}.{row.lowest_minor}+")
            else:
                listed.append(str(row.major))
        return ", ".join(listed) or "-"

    lines = ["| distribution | x64 | arm64 | the page's line |", "|---|---|---|---|"]
    for distro in dict.fromkeys(row.distro for row in LINUX_MATRIX):
        rows = [row for row in LINUX_MATRIX if row.distro == distro]
        cites = "<br>".join(
            "`" + cite.replace("|", "\\|") + "`" for cite in dict.fromkeys(r.cite for r in rows)
        )
        lines.append(
            f"| `{distro}` | {versions(rows, 'x64')} | {versions(rows, 'arm64')} | {cites} |"
        )
    return "\n".join(lines)


def test_the_readme_linux_table_is_the_matrix():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    begin, end = "<!-- linux-matrix:begin -->\n", "\n<!-- linux-matrix:end -->"
    shown = readme[readme.index(begin) + len(begin) : readme.index(end)]
    expected = _readme_linux_table()
    assert shown == expected, (
        "README's Linux table differs from LINUX_MATRIX; it should be:\n" + expected
    )
