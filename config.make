# Sourced by nginx's auto/make after it writes the Makefile: C++ objects get C++17 and the
# source tree's path, where they find the files they embed (core/include/ratelimit/embed.h).
for ratelimit_src in $RATELIMIT_CORE_SRCS $RATELIMIT_NGX_SRCS; do
    case "$ratelimit_src" in
    *.cpp)
        ratelimit_obj="addon/$(basename $(dirname $ratelimit_src))/$(basename $ratelimit_src .cpp).o"
        echo "$NGX_OBJS/$ratelimit_obj : CFLAGS += -std=c++17 -DRATELIMIT_SOURCE_DIR='\"$RATELIMIT_SOURCE_DIR\"'" >> $NGX_MAKEFILE
        ;;
    esac
done
