#include "api/pbjson.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "google/protobuf/struct.pb-c.h"
#include "switchboard/error.h"

static void *pb_alloc(void *ud, size_t size)
{
    (void)ud;
    return sb_malloc(size ? size : 1);
}

static void pb_free(void *ud, void *p)
{
    (void)ud;
    sb_free(p);
}

ProtobufCAllocator sb_pb_allocator = {.alloc = pb_alloc, .free = pb_free, .allocator_data = NULL};

typedef struct ctx {
    char *err;
    size_t errlen;
} ctx;

static int fail(ctx *c, int rc, const char *field, const char *why)
{
    if (c->err && c->errlen)
        snprintf(c->err, c->errlen, "%s: %s", field ? field : "message", why);
    return rc;
}

static size_t elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

static ProtobufCMessage *msg_new(const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = sb_malloc(d->sizeof_message);
    if (m)
        protobuf_c_message_init(d, m);
    return m;
}

static void msg_free(ProtobufCMessage *m)
{
    if (m)
        protobuf_c_message_free_unpacked(m, &sb_pb_allocator);
}

static char *str_dup(const char *s, size_t n)
{
    char *d = sb_malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* A map<K, V> field's entry type: protoc generates "<Field>Entry" with key = 1, value = 2. */
static bool is_map_entry(const ProtobufCMessageDescriptor *d)
{
    size_t nl = strlen(d->name);
    return d->n_fields == 2 && nl > 5 && strcmp(d->name + nl - 5, "Entry") == 0 &&
           d->fields[0].id == 1 && d->fields[1].id == 2 &&
           d->fields[0].type == PROTOBUF_C_TYPE_STRING && strcmp(d->fields[0].name, "key") == 0;
}

/* ---- JSON -> message ------------------------------------------------------------------ */

static int to_message(ctx *c, const ProtobufCMessageDescriptor *d, const json_t *j,
                      ProtobufCMessage **out, int depth, const char *name);

static int to_value(ctx *c, const json_t *j, Google__Protobuf__Value **out, int depth);

static int to_struct(ctx *c, const json_t *j, Google__Protobuf__Struct **out, int depth)
{
    if (!json_is_object(j))
        return fail(c, SB_EINVAL, "struct", "expected an object");
    Google__Protobuf__Struct *s =
        (Google__Protobuf__Struct *)msg_new(&google__protobuf__struct__descriptor);
    if (!s)
        return SB_ENOMEM;
    size_t n = json_object_size(j);
    s->fields = n ? sb_calloc(n, sizeof *s->fields) : NULL;
    if (n && !s->fields) {
        msg_free(&s->base);
        return SB_ENOMEM;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)j, k, v)
    {
        Google__Protobuf__Struct__FieldsEntry *e = (Google__Protobuf__Struct__FieldsEntry *)msg_new(
            &google__protobuf__struct__fields_entry__descriptor);
        if (!e) {
            msg_free(&s->base);
            return SB_ENOMEM;
        }
        s->fields[s->n_fields++] = e;
        e->key = str_dup(k, strlen(k));
        if (!e->key) {
            msg_free(&s->base);
            return SB_ENOMEM;
        }
        int rc = to_value(c, v, &e->value, depth + 1);
        if (rc) {
            msg_free(&s->base);
            return rc;
        }
    }
    *out = s;
    return 0;
}

static int to_list(ctx *c, const json_t *j, Google__Protobuf__ListValue **out, int depth)
{
    if (!json_is_array(j))
        return fail(c, SB_EINVAL, "list", "expected an array");
    Google__Protobuf__ListValue *l =
        (Google__Protobuf__ListValue *)msg_new(&google__protobuf__list_value__descriptor);
    if (!l)
        return SB_ENOMEM;
    size_t n = json_array_size(j);
    l->values = n ? sb_calloc(n, sizeof *l->values) : NULL;
    if (n && !l->values) {
        msg_free(&l->base);
        return SB_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        int rc = to_value(c, json_array_get(j, i), &l->values[i], depth + 1);
        if (rc) {
            msg_free(&l->base);
            return rc;
        }
        l->n_values++;
    }
    *out = l;
    return 0;
}

static int to_value(ctx *c, const json_t *j, Google__Protobuf__Value **out, int depth)
{
    if (depth > SB_PBJSON_MAX_DEPTH)
        return fail(c, SB_EINVAL, "value", "nested too deeply");
    Google__Protobuf__Value *v =
        (Google__Protobuf__Value *)msg_new(&google__protobuf__value__descriptor);
    if (!v)
        return SB_ENOMEM;
    int rc = 0;
    switch (json_typeof(j)) {
    case JSON_NULL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = json_is_true(j);
        break;
    case JSON_INTEGER:
    case JSON_REAL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        v->number_value = json_number_value(j);
        break;
    case JSON_STRING:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
        v->string_value = str_dup(json_string_value(j), json_string_length(j));
        rc = v->string_value ? 0 : SB_ENOMEM;
        break;
    case JSON_OBJECT:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        rc = to_struct(c, j, &v->struct_value, depth);
        break;
    case JSON_ARRAY:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        rc = to_list(c, j, &v->list_value, depth);
        break;
    }
    if (rc) {
        msg_free(&v->base);
        return rc;
    }
    *out = v;
    return 0;
}

static int int_in(ctx *c, const ProtobufCFieldDescriptor *f, const json_t *j, int64_t lo,
                  int64_t hi, int64_t *out)
{
    if (!json_is_integer(j))
        return fail(c, SB_EINVAL, f->name, "expected an integer");
    json_int_t v = json_integer_value(j);
    if (v < lo || v > hi)
        return fail(c, SB_EINVAL, f->name, "integer out of range");
    *out = v;
    return 0;
}

/* Converts one JSON value into the element at dst (a singular field or an array slot). */
static int to_elem(ctx *c, const ProtobufCFieldDescriptor *f, const json_t *j, void *dst, int depth)
{
    int64_t i = 0;
    int rc;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        rc = int_in(c, f, j, INT32_MIN, INT32_MAX, &i);
        if (!rc)
            *(int32_t *)dst = (int32_t)i;
        return rc;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        rc = int_in(c, f, j, 0, UINT32_MAX, &i);
        if (!rc)
            *(uint32_t *)dst = (uint32_t)i;
        return rc;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        rc = int_in(c, f, j, INT64_MIN, INT64_MAX, &i);
        if (!rc)
            *(int64_t *)dst = i;
        return rc;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        rc = int_in(c, f, j, 0, INT64_MAX, &i);
        if (!rc)
            *(uint64_t *)dst = (uint64_t)i;
        return rc;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        if (!json_is_number(j))
            return fail(c, SB_EINVAL, f->name, "expected a number");
        if (f->type == PROTOBUF_C_TYPE_FLOAT)
            *(float *)dst = (float)json_number_value(j);
        else
            *(double *)dst = json_number_value(j);
        return 0;
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(j))
            return fail(c, SB_EINVAL, f->name, "expected true or false");
        *(protobuf_c_boolean *)dst = json_is_true(j);
        return 0;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        /* Enums are open (proto3): a number without a name passes through as the wire's
         * own unknown values do. */
        if (json_is_integer(j) && json_integer_value(j) >= INT32_MIN &&
            json_integer_value(j) <= INT32_MAX) {
            *(int *)dst = (int)json_integer_value(j);
            return 0;
        }
        const ProtobufCEnumValue *ev =
            json_is_string(j)
                ? protobuf_c_enum_descriptor_get_value_by_name(ed, json_string_value(j))
                : NULL;
        if (!ev)
            return fail(c, SB_EINVAL, f->name, "not a value of the enum");
        *(int *)dst = ev->value;
        return 0;
    }
    case PROTOBUF_C_TYPE_STRING: {
        if (!json_is_string(j))
            return fail(c, SB_EINVAL, f->name, "expected a string");
        char *s = str_dup(json_string_value(j), json_string_length(j));
        if (!s)
            return SB_ENOMEM;
        char **slot = dst;
        if (*slot && *slot != (char *)f->default_value && *slot != protobuf_c_empty_string)
            sb_free(*slot);
        *slot = s;
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES:
        return fail(c, SB_ENOTSUP, f->name, "bytes fields have no JSON form");
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *md = f->descriptor;
        ProtobufCMessage *m = NULL;
        if (md == &google__protobuf__struct__descriptor)
            rc = to_struct(c, j, (Google__Protobuf__Struct **)&m, depth + 1);
        else if (md == &google__protobuf__value__descriptor)
            rc = to_value(c, j, (Google__Protobuf__Value **)&m, depth + 1);
        else if (md == &google__protobuf__list_value__descriptor)
            rc = to_list(c, j, (Google__Protobuf__ListValue **)&m, depth + 1);
        else
            rc = to_message(c, md, j, &m, depth + 1, f->name);
        if (rc)
            return rc;
        ProtobufCMessage **slot = dst;
        msg_free(*slot);
        *slot = m;
        return 0;
    }
    }
    return fail(c, SB_ENOTSUP, f->name, "unsupported field type");
}

/* A map field from a JSON object: one entry message per member. */
static int to_map(ctx *c, const ProtobufCFieldDescriptor *f, const json_t *j, char *p, int depth)
{
    if (!json_is_object(j))
        return fail(c, SB_EINVAL, f->name, "expected an object");
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    size_t n = json_object_size(j);
    ProtobufCMessage **arr = n ? sb_calloc(n, sizeof *arr) : NULL;
    if (n && !arr)
        return SB_ENOMEM;
    *(void **)(p + f->offset) = arr;
    size_t *np = (size_t *)(p + f->quantifier_offset);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)j, k, v)
    {
        ProtobufCMessage *e = msg_new(ed);
        if (!e)
            return SB_ENOMEM;
        arr[(*np)++] = e;
        json_t *key = json_stringn(k, strlen(k));
        int rc = key ? to_elem(c, &ed->fields[0], key, (char *)e + ed->fields[0].offset, depth)
                     : SB_ENOMEM;
        json_decref(key);
        const ProtobufCFieldDescriptor *vf = &ed->fields[1];
        rc = rc ? rc : to_elem(c, vf, v, (char *)e + vf->offset, depth);
        if (rc)
            return rc;
        if (vf->label == PROTOBUF_C_LABEL_OPTIONAL && vf->type != PROTOBUF_C_TYPE_STRING &&
            vf->type != PROTOBUF_C_TYPE_MESSAGE)
            *(protobuf_c_boolean *)((char *)e + vf->quantifier_offset) = 1;
    }
    return 0;
}

static int to_field(ctx *c, const ProtobufCFieldDescriptor *f, const json_t *j, char *p, int depth)
{
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        if (f->type == PROTOBUF_C_TYPE_MESSAGE && is_map_entry(f->descriptor))
            return to_map(c, f, j, p, depth);
        if (!json_is_array(j))
            return fail(c, SB_EINVAL, f->name, "expected an array");
        size_t n = json_array_size(j), es = elem_size(f->type);
        char *arr = n ? sb_calloc(n, es) : NULL;
        if (n && !arr)
            return SB_ENOMEM;
        *(void **)(p + f->offset) = arr;
        size_t *np = (size_t *)(p + f->quantifier_offset);
        for (size_t i = 0; i < n; i++) {
            int rc = to_elem(c, f, json_array_get(j, i), arr + i * es, depth);
            if (rc)
                return rc;
            (*np)++;
        }
        return 0;
    }
    int rc = to_elem(c, f, j, p + f->offset, depth);
    if (rc)
        return rc;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        *(uint32_t *)(p + f->quantifier_offset) = f->id;
    else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
             f->type != PROTOBUF_C_TYPE_MESSAGE)
        *(protobuf_c_boolean *)(p + f->quantifier_offset) = 1;
    return 0;
}

static int to_message(ctx *c, const ProtobufCMessageDescriptor *d, const json_t *j,
                      ProtobufCMessage **out, int depth, const char *name)
{
    if (depth > SB_PBJSON_MAX_DEPTH)
        return fail(c, SB_EINVAL, name, "nested too deeply");
    if (!json_is_object(j))
        return fail(c, SB_EINVAL, name, "expected an object");
    ProtobufCMessage *m = msg_new(d);
    if (!m)
        return SB_ENOMEM;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const json_t *v = json_object_get(j, f->name);
        if (!v || json_is_null(v))
            continue;
        int rc = 0;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(uint32_t *)((char *)m + f->quantifier_offset) != 0)
            rc = fail(c, SB_EINVAL, f->name, "another member of its oneof is set");
        rc = rc ? rc : to_field(c, f, v, (char *)m, depth);
        if (rc) {
            msg_free(m);
            return rc;
        }
    }
    *out = m;
    return 0;
}

int sb_pbjson_to_message(const ProtobufCMessageDescriptor *d, const json_t *j,
                         ProtobufCMessage **out, char *err, size_t errlen)
{
    ctx c = {err, errlen};
    if (err && errlen)
        err[0] = 0;
    *out = NULL;
    if (d == &google__protobuf__struct__descriptor)
        return to_struct(&c, j, (Google__Protobuf__Struct **)out, 0);
    if (d == &google__protobuf__value__descriptor)
        return to_value(&c, j, (Google__Protobuf__Value **)out, 0);
    if (d == &google__protobuf__list_value__descriptor)
        return to_list(&c, j, (Google__Protobuf__ListValue **)out, 0);
    return to_message(&c, d, j, out, 0, NULL);
}

/* ---- message -> JSON ------------------------------------------------------------------ */

static int from_message(const ProtobufCMessage *m, json_t **out, int depth);

static int from_value(const Google__Protobuf__Value *v, json_t **out, int depth);

static int from_struct(const Google__Protobuf__Struct *s, json_t **out, int depth)
{
    json_t *o = json_object();
    if (!o)
        return SB_ENOMEM;
    for (size_t i = 0; i < s->n_fields; i++) {
        const Google__Protobuf__Struct__FieldsEntry *e = s->fields[i];
        json_t *v = NULL;
        int rc = from_value(e->value, &v, depth + 1);
        if (!rc && json_object_set_new(o, e->key ? e->key : "", v) != 0)
            rc = SB_ENOMEM;
        if (rc) {
            json_decref(o);
            return rc;
        }
    }
    *out = o;
    return 0;
}

static int from_list(const Google__Protobuf__ListValue *l, json_t **out, int depth)
{
    json_t *a = json_array();
    if (!a)
        return SB_ENOMEM;
    for (size_t i = 0; i < l->n_values; i++) {
        json_t *v = NULL;
        int rc = from_value(l->values[i], &v, depth + 1);
        if (!rc && json_array_append_new(a, v) != 0)
            rc = SB_ENOMEM;
        if (rc) {
            json_decref(a);
            return rc;
        }
    }
    *out = a;
    return 0;
}

static int from_value(const Google__Protobuf__Value *v, json_t **out, int depth)
{
    if (depth > SB_PBJSON_MAX_DEPTH)
        return SB_EINVAL;
    if (!v) {
        *out = json_null();
        return 0;
    }
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE: {
        double d = v->number_value;
        if (!isfinite(d))
            return SB_ENOTSUP;
        /* Integers stay integers, as REST wrote them. */
        if (d == floor(d) && fabs(d) < 9007199254740992.0)
            *out = json_integer((json_int_t)d);
        else
            *out = json_real(d);
        break;
    }
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        *out = json_string(v->string_value ? v->string_value : "");
        break;
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        *out = json_boolean(v->bool_value);
        break;
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return v->struct_value ? from_struct(v->struct_value, out, depth)
                               : (*out = json_object(), *out ? 0 : SB_ENOMEM);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
        return v->list_value ? from_list(v->list_value, out, depth)
                             : (*out = json_array(), *out ? 0 : SB_ENOMEM);
    default:
        *out = json_null();
        break;
    }
    return *out ? 0 : SB_ENOMEM;
}

static int from_elem(const ProtobufCFieldDescriptor *f, const void *src, json_t **out, int depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        *out = json_integer(*(const int32_t *)src);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        *out = json_integer(*(const uint32_t *)src);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        *out = json_integer(*(const int64_t *)src);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t u = *(const uint64_t *)src;
        *out = u > INT64_MAX ? json_real((double)u) : json_integer((json_int_t)u);
        break;
    }
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
        double d = f->type == PROTOBUF_C_TYPE_FLOAT ? *(const float *)src : *(const double *)src;
        if (!isfinite(d))
            return SB_ENOTSUP;
        *out = json_real(d);
        break;
    }
    case PROTOBUF_C_TYPE_BOOL:
        *out = json_boolean(*(const protobuf_c_boolean *)src);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)src);
        *out = ev ? json_string(ev->name) : json_integer(*(const int *)src);
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)src;
        /* Not UTF-8 (protobuf-c does not check): JSON cannot carry it. */
        *out = json_string(s ? s : "");
        if (!*out)
            return SB_EINVAL;
        break;
    }
    case PROTOBUF_C_TYPE_BYTES:
        return SB_ENOTSUP;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(ProtobufCMessage *const *)src;
        const ProtobufCMessageDescriptor *md = f->descriptor;
        if (!m) {
            *out = json_null();
            return 0;
        }
        if (md == &google__protobuf__struct__descriptor)
            return from_struct((const Google__Protobuf__Struct *)m, out, depth + 1);
        if (md == &google__protobuf__value__descriptor)
            return from_value((const Google__Protobuf__Value *)m, out, depth + 1);
        if (md == &google__protobuf__list_value__descriptor)
            return from_list((const Google__Protobuf__ListValue *)m, out, depth + 1);
        return from_message(m, out, depth + 1);
    }
    }
    return *out ? 0 : SB_ENOMEM;
}

static bool is_default(const ProtobufCFieldDescriptor *f, const char *p)
{
    const void *v = p + f->offset;
    switch (elem_size(f->type)) {
    case 4:
        return *(const uint32_t *)v == 0;
    case 8:
        if (f->type == PROTOBUF_C_TYPE_DOUBLE)
            return *(const double *)v == 0;
        if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)
            break;
        return *(const uint64_t *)v == 0;
    default:
        break;
    }
    if (f->type == PROTOBUF_C_TYPE_STRING) {
        const char *s = *(char *const *)v;
        return !s || !*s;
    }
    if (f->type == PROTOBUF_C_TYPE_MESSAGE)
        return *(ProtobufCMessage *const *)v == NULL;
    if (f->type == PROTOBUF_C_TYPE_BOOL)
        return *(const protobuf_c_boolean *)v == 0;
    if (f->type == PROTOBUF_C_TYPE_BYTES)
        return ((const ProtobufCBinaryData *)v)->len == 0;
    return false;
}

static bool present(const ProtobufCFieldDescriptor *f, const char *p)
{
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return *(const uint32_t *)(p + f->quantifier_offset) == f->id;
    switch (f->label) {
    case PROTOBUF_C_LABEL_REQUIRED:
        return true;
    case PROTOBUF_C_LABEL_OPTIONAL:
        if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)
            return *(void *const *)(p + f->offset) != NULL;
        return *(const protobuf_c_boolean *)(p + f->quantifier_offset);
    case PROTOBUF_C_LABEL_NONE:
        return !is_default(f, p);
    case PROTOBUF_C_LABEL_REPEATED:
        return *(const size_t *)(p + f->quantifier_offset) > 0;
    }
    return false;
}

static int from_field(const ProtobufCFieldDescriptor *f, const char *p, json_t **out, int depth)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED)
        return from_elem(f, p + f->offset, out, depth);
    size_t n = *(const size_t *)(p + f->quantifier_offset);
    const char *arr = *(char *const *)(p + f->offset);
    size_t es = elem_size(f->type);
    bool map = f->type == PROTOBUF_C_TYPE_MESSAGE && is_map_entry(f->descriptor);
    json_t *c = map ? json_object() : json_array();
    if (!c)
        return SB_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *v = NULL;
        int rc;
        if (map) {
            const ProtobufCMessage *e = *(ProtobufCMessage *const *)(arr + i * es);
            const ProtobufCMessageDescriptor *ed = f->descriptor;
            const char *key = *(char *const *)((const char *)e + ed->fields[0].offset);
            rc = from_elem(&ed->fields[1], (const char *)e + ed->fields[1].offset, &v, depth);
            if (!rc && json_object_set_new(c, key ? key : "", v) != 0)
                rc = SB_ENOMEM;
        } else {
            rc = from_elem(f, arr + i * es, &v, depth);
            if (!rc && json_array_append_new(c, v) != 0)
                rc = SB_ENOMEM;
        }
        if (rc) {
            json_decref(c);
            return rc;
        }
    }
    *out = c;
    return 0;
}

static int from_message(const ProtobufCMessage *m, json_t **out, int depth)
{
    if (depth > SB_PBJSON_MAX_DEPTH)
        return SB_EINVAL;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *p = (const char *)m;
    json_t *o = json_object();
    if (!o)
        return SB_ENOMEM;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (!present(f, p))
            continue;
        json_t *v = NULL;
        int rc = from_field(f, p, &v, depth);
        if (!rc && json_object_set_new(o, f->name, v) != 0)
            rc = SB_ENOMEM;
        if (rc) {
            json_decref(o);
            return rc;
        }
    }
    *out = o;
    return 0;
}

int sb_pbjson_from_message(const ProtobufCMessage *m, json_t **out)
{
    *out = NULL;
    if (m->descriptor == &google__protobuf__struct__descriptor)
        return from_struct((const Google__Protobuf__Struct *)m, out, 0);
    if (m->descriptor == &google__protobuf__value__descriptor)
        return from_value((const Google__Protobuf__Value *)m, out, 0);
    if (m->descriptor == &google__protobuf__list_value__descriptor)
        return from_list((const Google__Protobuf__ListValue *)m, out, 0);
    return from_message(m, out, 0);
}
