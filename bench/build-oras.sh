#!/usr/bin/env bash
# Build the `oras` CLI that bench/artifacts.py compares Forge's push with, on a Debian bookworm
# machine without the Go module proxy: Debian's Go (1.19) in GOPATH mode, every dependency but
# three from Debian's golang-*-dev packages, those three from source checkouts given here.
# Bench only: no test needs oras, and .ci/run does not call this.
#
#   bench/build-oras.sh ORAS_GIT ORAS_GO_GIT ORAS_CREDENTIALS_GO_GIT [DEST]
#
# ORAS_GIT, ORAS_GO_GIT and ORAS_CREDENTIALS_GO_GIT are git clones of oras-project/oras,
# oras-project/oras-go and oras-project/oras-credentials-go; the revisions are those oras v1.0.1's
# go.mod pins (oras-go v2.2.1-0.20230627113607-6b5bd4b4372b, oras-credentials-go v0.2.0). DEST
# defaults to /usr/local/bin/oras. The one change to oras's source: strings.CutPrefix (Go 1.20),
# in `oras repo ls` only, is spelled with TrimPrefix/HasPrefix for Go 1.19; the push path is as
# released.
set -euo pipefail
oras_git=$1 oras_go_git=$2 creds_git=$3 dest=${4:-/usr/local/bin/oras}
oras_rev=v1.0.1 oras_go_rev=6b5bd4b4372b creds_rev=v0.2.0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go \
    golang-github-opencontainers-image-spec-dev golang-github-opencontainers-go-digest-dev \
    golang-github-sirupsen-logrus-dev golang-github-spf13-cobra-dev golang-github-spf13-pflag-dev \
    golang-github-inconshreveable-mousetrap-dev golang-golang-x-term-dev golang-golang-x-sync-dev \
    golang-golang-x-sys-dev golang-gopkg-yaml.v3-dev >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/oras.land/oras-go" "$work/src/github.com/oras-project"
git -C "$oras_git" archive --prefix=oras/ "$oras_rev" | tar -x -C "$work/src/oras.land"
git -C "$oras_go_git" archive --prefix=v2/ "$oras_go_rev" | tar -x -C "$work/src/oras.land/oras-go"
git -C "$creds_git" archive --prefix=oras-credentials-go/ "$creds_rev" | tar -x -C "$work/src/github.com/oras-project"

cd "$work/src/oras.land/oras"
sed -i 's/if subRepo, found := strings.CutPrefix(repo, opts.namespace); found {/if subRepo, found := strings.TrimPrefix(repo, opts.namespace), strings.HasPrefix(repo, opts.namespace); found {/' \
  cmd/oras/root/repo/ls.go
commit=$(git -C "$oras_git" rev-parse "$oras_rev^{commit}")
GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOCACHE="$work/cache" go build -trimpath \
  -ldflags "-s -w -X oras.land/oras/internal/version.BuildMetadata=debian-go1.19 -X oras.land/oras/internal/version.GitCommit=$commit" \
  -o "$dest" ./cmd/oras
"$dest" version
