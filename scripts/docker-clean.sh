#!/usr/bin/env bash
# Removes what the container tests left behind: every container (paused ones included),
# network and volume labeled io.bully.test — after an interrupted run, or one with
# BULLY_KEEP_CONTAINERS=1. Nothing without that label is touched.
#
#   scripts/docker-clean.sh                  every test run's leftovers
#   scripts/docker-clean.sh --session ID     only those of one scripts/docker-test.sh run
#   scripts/docker-clean.sh --images         also every image scripts/docker-images.sh built
#                                            (label io.bully.built-by): the next run is cold
set -euo pipefail

filter="label=io.bully.test"
images=0
while [ $# -gt 0 ]; do
    case "$1" in
        --session)
            filter="label=io.bully.test.session=${2:?--session needs an id}"
            shift 2
            ;;
        --images)
            images=1
            shift
            ;;
        -h | --help)
            sed -n '2,10p' "$0"
            exit 0
            ;;
        *)
            echo "docker-clean: unknown argument $1" >&2
            exit 2
            ;;
    esac
done

removed=0
for id in $(docker ps --all --quiet --filter "$filter"); do
    # A frozen container cannot be killed on every engine version: thaw it first.
    docker unpause "$id" >/dev/null 2>&1 || true
    docker rm --force --volumes "$id" >/dev/null && removed=$((removed + 1))
done
networks=0
for id in $(docker network ls --quiet --filter "$filter"); do
    docker network rm "$id" >/dev/null && networks=$((networks + 1))
done
volumes=0
for name in $(docker volume ls --quiet --filter "$filter"); do
    docker volume rm --force "$name" >/dev/null && volumes=$((volumes + 1))
done
echo "docker-clean: removed $removed containers, $networks networks, $volumes volumes ($filter)"

if [ "$images" = 1 ]; then
    # Only the tags scripts/docker-images.sh makes, and a base image only if it built it (an
    # image pulled from a registry under the same name stays). Newest first: children before
    # the images they were built FROM.
    version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml" | head -n 1)"
    ours() {
        [ -n "$(docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null)" ]
    }
    tags=(
        $(docker images --format '{{.Repository}}:{{.Tag}}' bully-secantus)
        "bully:$version" "bully-build-cache:$version"
    )
    if ours rust:1-bookworm io.bully.recipe.rust; then tags+=(rust:1-bookworm); fi
    if ours debian:bookworm-slim io.bully.recipe.debian; then tags+=(debian:bookworm-slim); fi
    for tag in "${tags[@]}"; do
        if docker image inspect "$tag" >/dev/null 2>&1; then
            docker rmi "$tag" >/dev/null && echo "docker-clean: removed image $tag"
        fi
    done
fi
