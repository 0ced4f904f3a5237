// Expected failures are values (absl::Status); these macros propagate them
// without the boilerplate. Exceptions are kept for programmer errors.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define CKPTD_CONCAT_INNER_(a, b) a##b
#define CKPTD_CONCAT_(a, b) CKPTD_CONCAT_INNER_(a, b)

// CKPTD_TRY(expr): returns the Status from the enclosing function if not ok.
#define CKPTD_TRY(expr)                                   \
  do {                                                    \
    if (absl::Status _st = (expr); !_st.ok()) return _st; \
  } while (0)

// CKPTD_ASSIGN_OR_RETURN(lhs, expr): lhs = *expr, or return its Status.
#define CKPTD_ASSIGN_OR_RETURN(lhs, expr) \
  CKPTD_ASSIGN_OR_RETURN_IMPL_(CKPTD_CONCAT_(_statusor_, __LINE__), lhs, expr)
// `lhs` may be a declaration ("auto x"), so it cannot be parenthesized.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define CKPTD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)
