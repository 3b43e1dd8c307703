// Text in another language (the dashboard page, the Lua scripts) lives in files of its own and
// is copied into the binary at build time by the assembler's .incbin, so every build (nginx's
// `config`, CMakeLists.txt, the Makefile's fuzz and Debian targets, the Dockerfile) uses the
// same bytes. The build passes RATELIMIT_SOURCE_DIR, the absolute path of the source tree, and
// lists the embedded files as dependencies, so that editing one rebuilds what embeds it.
//
//   RATELIMIT_EMBED(dashboard_html, "ngx_module/dashboard/index.html")
//   std::string_view page = dashboard_html();   // the file's bytes, followed by a NUL
//
// Use it once per file, at namespace scope in one .cpp; the name must be unique in the binary.
#pragma once

#include <cstddef>
#include <string_view>

#ifndef RATELIMIT_SOURCE_DIR
#error "RATELIMIT_SOURCE_DIR (the source tree's absolute path) must be defined by the build"
#endif

#define RATELIMIT_EMBED(name, path)                                                        \
    extern "C" __attribute__((visibility("hidden"))) const char ratelimit_embed_##name[];     \
    extern "C" __attribute__((visibility("hidden"))) const char ratelimit_embed_##name##_end[]; \
    __asm__(".pushsection .rodata\n"                                                       \
            ".global ratelimit_embed_" #name "\n"                                          \
            ".hidden ratelimit_embed_" #name "\n"                                          \
            ".global ratelimit_embed_" #name "_end\n"                                      \
            ".hidden ratelimit_embed_" #name "_end\n"                                      \
            "ratelimit_embed_" #name ":\n"                                                 \
            ".incbin \"" RATELIMIT_SOURCE_DIR "/" path "\"\n"                              \
            "ratelimit_embed_" #name "_end:\n"                                             \
            ".byte 0\n"                                                                    \
            ".popsection\n");                                                              \
    inline std::string_view name()                                                         \
    {                                                                                      \
        return std::string_view(ratelimit_embed_##name,                                    \
                                static_cast<size_t>(ratelimit_embed_##name##_end           \
                                                    - ratelimit_embed_##name));            \
    }
