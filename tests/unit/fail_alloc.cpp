// Replaces the global operator new and delete of the unit tests (every form that could pair
// with them, so that ASan sees malloc matched with free) to fail allocations on demand.
#include "fail_alloc.h"

#include <cstdlib>
#include <new>

namespace ratelimit::testing_fakes {
namespace {

bool armed = false;
bool failed = false;
size_t left = 0;

}  // namespace

void fail_allocation_after(size_t allocations) noexcept
{
    armed = true;
    failed = false;
    left = allocations;
}

void allow_allocations() noexcept
{
    armed = false;
}

bool allocation_failed() noexcept
{
    return failed;
}

void* allocate(size_t size, bool may_throw)
{
    if (armed) {
        if (left == 0) {
            failed = true;
            if (may_throw) {
                throw std::bad_alloc();
            }
            return nullptr;
        }
        left--;
    }
    void* p = std::malloc(size ? size : 1);
    if (p == nullptr && may_throw) {
        throw std::bad_alloc();
    }
    return p;
}

}  // namespace ratelimit::testing_fakes

using ratelimit::testing_fakes::allocate;

void* operator new(size_t size) { return allocate(size, true); }
void* operator new[](size_t size) { return allocate(size, true); }
void* operator new(size_t size, const std::nothrow_t&) noexcept
{
    try {
        return allocate(size, false);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](size_t size, const std::nothrow_t& tag) noexcept
{
    return operator new(size, tag);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
