// ASSERT_OK / EXPECT_OK for absl::Status and StatusOr: on failure they print
// the status (code and message), not just "false".
#pragma once

#include <gtest/gtest.h>

#include <ostream>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ckptd::testing {

inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

inline ::testing::AssertionResult IsOk(const char* expr, const absl::Status& s) {
  if (s.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << expr << " is " << s;
}

}  // namespace ckptd::testing

#define EXPECT_OK(expr) \
  EXPECT_PRED_FORMAT1(::ckptd::testing::IsOk, ::ckptd::testing::StatusOf(expr))
#define ASSERT_OK(expr) \
  ASSERT_PRED_FORMAT1(::ckptd::testing::IsOk, ::ckptd::testing::StatusOf(expr))
