/* Session history, live participants and server messages (filled in by the sessions work). */
#include "api/app.h"

int sb_api_sessions_register(sb_app *app, sb_router *r)
{
    (void)app;
    (void)r;
    return 0;
}
