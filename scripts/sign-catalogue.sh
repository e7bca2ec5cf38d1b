#!/bin/sh
# Signs an app store catalogue: writes FILE.sig, the hex ed25519 signature of FILE's exact bytes
# (docs/internals/appstore.md). KEY is a PEM ed25519 private key (openssl genpkey -algorithm
# ed25519). The project's own catalogue is data/store/catalogue.json, signed with the
# maintainers' key; for your own catalogue, trust your key's public half with
#   openssl pkey -in KEY -pubout -outform DER | tail -c 32 | od -An -tx1 -v | tr -d ' \n' >> $NILBOX_HOME/store/trusted.keys
set -eu
[ $# -eq 2 ] || { echo "usage: $0 KEY.pem CATALOGUE.json" >&2; exit 2; }
key=$1
doc=$2
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$doc" ||
    { echo "sign-catalogue: $doc is not valid JSON" >&2; exit 1; }
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
openssl pkeyutl -sign -rawin -inkey "$key" -in "$doc" -out "$tmp"
{ od -An -tx1 -v "$tmp" | tr -d ' \n'; echo; } > "$doc.sig"
echo "signed $doc -> $doc.sig (public key $(openssl pkey -in "$key" -pubout -outform DER | tail -c 32 | od -An -tx1 -v | tr -d ' \n'))"
