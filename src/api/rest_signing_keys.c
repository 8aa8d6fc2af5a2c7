/* Project signing secrets for backends that mint HS256 participant tokens themselves. */
#include "api/app.h"

int sb_api_signing_keys_register(sb_app *app, sb_router *r)
{
    (void)app;
    (void)r;
    return 0;
}
