#!/bin/sh
# Regenerates the test-only CA and the `localhost` server certificate it signs.
# These keys protect nothing: they exist so tests can run the fake Truedat over HTTPS.
# Usage: (cd tests/support/certs && ./generate.sh)
set -eu
days=36500
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=truedat-auth-proxy test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out localhost.key
openssl req -new -key localhost.key -subj "/CN=localhost" -out localhost.csr
cat > localhost.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EXT
openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
  -extfile localhost.ext -out localhost.pem
rm -f localhost.csr localhost.ext ca.srl ca.key
