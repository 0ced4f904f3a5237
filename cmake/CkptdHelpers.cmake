# ckptd_test(NAME SOURCES... [LIBS ...] [LABEL label]): one GoogleTest
# binary, registered with CTest test by test so failures name the case.
function(ckptd_test name)
  cmake_parse_arguments(ARG "" "LABEL" "LIBS" ${ARGN})
  if(NOT ARG_LABEL)
    set(ARG_LABEL unit)
  endif()
  add_executable(${name} ${ARG_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} ckptd_testing GTest::gtest GTest::gmock
                                        GTest::gtest_main)
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS ${ARG_LABEL} TIMEOUT 300)
endfunction()
