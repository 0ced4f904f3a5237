# ckptd_test(NAME SOURCES... [LIBS ...] [DEFINES ...] [LABEL label]): one GoogleTest
# binary, registered with CTest test by test so failures name the case.
#
# CKPTD_SANITIZED_ONLY lists suites (gguf, storage, ...) that this tree does
# not build because the sanitizer tree builds and runs them (scripts/test.sh:
# each unit test runs once, under ASan + UBSan, instead of twice).
set(CKPTD_SANITIZED_ONLY "" CACHE STRING "Unit suites built only in sanitizer trees")
function(ckptd_test name)
  string(REGEX REPLACE "_tests$" "" suite ${name})
  if(NOT CKPTD_SANITIZE AND suite IN_LIST CKPTD_SANITIZED_ONLY)
    return()
  endif()
  cmake_parse_arguments(ARG "" "LABEL" "LIBS;DEFINES" ${ARGN})
  if(NOT ARG_LABEL)
    set(ARG_LABEL unit)
  endif()
  add_executable(${name} ${ARG_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} ckptd_testing GTest::gtest GTest::gmock
                                        GTest::gtest_main)
  if(ARG_DEFINES)
    target_compile_definitions(${name} PRIVATE ${ARG_DEFINES})
  endif()
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS ${ARG_LABEL} TIMEOUT 300)
endfunction()
