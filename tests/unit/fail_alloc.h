// Out of memory on demand: the unit tests' operator new (fail_alloc.cpp) throws
// std::bad_alloc at the Nth allocation after fail_allocation_after(N), until allow_allocations().
#pragma once

#include <cstddef>

namespace ratelimit::testing_fakes {

void fail_allocation_after(size_t allocations) noexcept;  // 0: the very next one fails
void allow_allocations() noexcept;
bool allocation_failed() noexcept;  // since the last fail_allocation_after

}  // namespace ratelimit::testing_fakes
