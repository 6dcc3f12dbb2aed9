# The local trace viewer (agent/viewer.h, agent/tail.h) as the agent_viewer
# library, with the page (agent/ui/index.html) embedded at build time.
# Included from agent/CMakeLists.txt, so relative paths are from agent/.
set(SIDETRACE_VIEWER_GENERATED ${CMAKE_CURRENT_BINARY_DIR}/generated)
file(MAKE_DIRECTORY ${SIDETRACE_VIEWER_GENERATED})
add_custom_command(
  OUTPUT ${SIDETRACE_VIEWER_GENERATED}/viewer_ui_page.h
  COMMAND ${CMAKE_COMMAND} -DINPUT=${CMAKE_CURRENT_SOURCE_DIR}/ui/index.html
          -DOUTPUT=${SIDETRACE_VIEWER_GENERATED}/viewer_ui_page.h
          -P ${CMAKE_CURRENT_SOURCE_DIR}/ui/embed.cmake
  DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/ui/index.html ${CMAKE_CURRENT_SOURCE_DIR}/ui/embed.cmake
  COMMENT "Embedding the trace viewer page"
  VERBATIM)

add_library(agent_viewer viewer.cpp tail.cpp ${SIDETRACE_VIEWER_GENERATED}/viewer_ui_page.h)
target_include_directories(agent_viewer PUBLIC ${PROJECT_SOURCE_DIR}
                                        PRIVATE ${SIDETRACE_VIEWER_GENERATED})
target_link_libraries(agent_viewer PUBLIC agent_admin PRIVATE nlohmann_json::nlohmann_json
                                                              Boost::system fmt::fmt)
sidetrace_target_options(agent_viewer)

sidetrace_add_test(agent_viewer_test viewer_test.cpp LIBS agent_viewer
                   nlohmann_json::nlohmann_json)
sidetrace_add_test(agent_tail_test tail_test.cpp LIBS agent_viewer agent_admin
                   nlohmann_json::nlohmann_json)
