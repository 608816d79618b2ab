# Sourced by scripts/test, scripts/chaos and scripts/soak: installs, when
# missing (idempotent), the Debian packages and the npm packages the tests'
# independent clients and tools need. Expects $repo, say and run.

# Debian packages the tests use: Qpid Proton for Python (imports only under
# /usr/bin/python3) and for C (the real-client load tool, perf/proton-c, with gcc);
# ocf-tester (resource-agents, with xmllint from libxml2-utils)
# and a single-node corosync + Pacemaker for the resource-manager tests; arping
# for the virtual-IP test; ip (iproute2) for the network-namespace partition test;
# promtool (prometheus) to check the /metrics format; chromium and chromium-driver
# for the status page's browser test; curl to scrape the HTTPS port as an
# independent client; nft (nftables) for the chaos run's asymmetric cuts.
packages=(python3-qpid-proton libqpid-proton11-dev gcc resource-agents libxml2-utils iputils-arping corosync
    pacemaker pacemaker-cli-utils crmsh iproute2 prometheus chromium chromium-driver curl nftables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && /usr/bin/python3 -c 'import proton' 2>/dev/null; then
    say "Debian packages: already installed"
else
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test: missing Debian packages (${missing[*]:-python3-qpid-proton}); installing them needs root;" >&2
        echo "  run as root, or: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
        exit 1
    fi
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
fi

# rhea for Node.js, into tests/clients/rhea/node_modules (git-ignored).
rhea_dir="$repo/tests/clients/rhea"
stamp="$rhea_dir/node_modules/.tandem-installed"
if [ ! -d "$rhea_dir/node_modules/rhea" ] || [ ! -e "$stamp" ] \
    || [ "$rhea_dir/package.json" -nt "$stamp" ] \
    || { [ -e "$rhea_dir/package-lock.json" ] && [ "$rhea_dir/package-lock.json" -nt "$stamp" ]; }; then
    say "cd $rhea_dir && npm install --no-audit --no-fund"
    (cd "$rhea_dir" && npm install --no-audit --no-fund)
    touch "$stamp"
else
    say "rhea: already installed"
fi
